"""The tiny models of the HF-equivalence tests exercise what they claim to: turning off a family's feature in
transformers' own model changes its greedy output, so an engine that ignored the feature could not pass
tests/engine/test_hf_equivalence_families.py. Plus what a model directory brings besides weights: the
end-of-turn ids of generation_config.json and the tokenizer's chat template."""

from __future__ import annotations

import json

import pytest
import torch

from engine import LLM, SamplingParams

LENGTHS = [5, 17, 33, 60]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (tests/conftest.py)."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from engine.models.tiny import save_tiny_model

    cache: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in cache:
            cache[arch] = str(save_tiny_model(tmp_path_factory.mktemp(f"feature-{arch}"), arch, seed=1234))
        return cache[arch]

    return get


def hf_greedy_with(model_dir: str, prompts, max_new: int = 12, **overrides) -> list[list[int]]:
    """transformers' greedy output with config attributes overridden (the weights stay the same)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=cfg, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            outs.append(out[0, len(ids):].tolist())
    return outs


@pytest.mark.parametrize("arch", ["mistral", "mixtral", "qwen3_moe", "olmoe", "gemma2", "gemma3", "phi3"])
def test_tiny_models_do_not_repeat_one_token(arch, tiny_dir, prompts_fn):
    outs = hf_greedy_with(tiny_dir(arch), prompts_fn(4, LENGTHS))
    assert all(len(set(o)) >= 5 for o in outs), outs


@pytest.mark.parametrize(("arch", "overrides"), [
    ("mistral", {"sliding_window": None}),
    ("phi3", {"sliding_window": None}),
    ("gemma2", {"sliding_window": 4096}),
    ("gemma3", {"sliding_window": 4096}),
    ("gemma2", {"attn_logit_softcapping": None}),
    ("qwen3_moe", {"norm_topk_prob": False}),
    ("olmoe", {"norm_topk_prob": True}),
    ("olmoe", {"clip_qkv": None}),
])
def test_each_feature_changes_the_output(arch, overrides, tiny_dir, prompts_fn):
    prompts = prompts_fn(4, LENGTHS)
    assert hf_greedy_with(tiny_dir(arch), prompts, **overrides) != hf_greedy_with(tiny_dir(arch), prompts)


def test_gemma3_global_layers_use_their_own_rope(tiny_dir, prompts_fn):
    prompts = prompts_fn(4, LENGTHS)
    base = hf_greedy_with(tiny_dir("gemma3"), prompts)
    from transformers import AutoConfig

    params = AutoConfig.from_pretrained(tiny_dir("gemma3")).rope_parameters
    one_table = {"sliding_attention": params["sliding_attention"], "full_attention": params["sliding_attention"]}
    assert hf_greedy_with(tiny_dir("gemma3"), prompts, rope_parameters=one_table) != base


def test_phi3_longrope_long_factors_change_long_prompts(tiny_dir, prompts_fn):
    prompts = prompts_fn(2, [45, 61], seed=5)
    from transformers import AutoConfig

    rope = dict(AutoConfig.from_pretrained(tiny_dir("phi3_longrope")).rope_parameters)
    rope["long_factor"] = rope["short_factor"]
    assert hf_greedy_with(tiny_dir("phi3_longrope"), prompts, rope_parameters=rope) != \
        hf_greedy_with(tiny_dir("phi3_longrope"), prompts)


def test_generation_config_end_of_turn_ids_stop_generation(tiny_dir, prompts_fn):
    path = tiny_dir("gemma3")
    prompt = prompts_fn(1, [9], seed=2)[0]
    llm = LLM(path, device="cpu")
    free_run = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].token_ids
    stop_id = free_run[4]
    with open(f"{path}/generation_config.json") as f:
        gen = json.load(f)
    gen["eos_token_id"] = [2, stop_id]
    with open(f"{path}/generation_config.json", "w") as f:
        json.dump(gen, f)
    try:
        llm = LLM(path, device="cpu")
        assert stop_id in llm.engine.eos_token_ids
        out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12))[0]
        assert out.token_ids == free_run[:free_run.index(stop_id) + 1] and out.finish_reason == "stop"
    finally:
        gen["eos_token_id"] = 2
        with open(f"{path}/generation_config.json", "w") as f:
            json.dump(gen, f)


GEMMA_TEMPLATE = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
                  "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
                  "{% endif %}")


def test_chat_template_comes_from_the_model_directory(tmp_path):
    """A Gemma-style template in the directory's tokenizer_config.json is what the engine's tokenizer renders."""
    from engine.models.tiny import DEFAULT_VOCAB, save_tiny_model

    path = save_tiny_model(tmp_path / "gemma3-chat", "gemma3", vocab_size=DEFAULT_VOCAB, tokenizer=True)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = GEMMA_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    llm = LLM(str(path), device="cpu")
    text = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert text == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    out = llm.generate([llm.tokenizer.encode(text)], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert len(out[0].token_ids) == 3
