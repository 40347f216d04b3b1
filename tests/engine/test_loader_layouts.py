"""Checkpoint layouts beyond transformers' default save: Gemma 3's multimodal checkpoints (the language model under
`language_model.`, a vision tower to skip) and mixture-of-experts checkpoints whose experts are already stacked
(transformers 5's in-memory layout); and the errors a broken checkpoint gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (tests/conftest.py)."""


def test_gemma3_multimodal_checkpoint_serves_its_language_model(tmp_path, prompts_fn):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    from engine.models.tiny import tiny_config

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)
    cfg = Gemma3Config(text_config=tiny_config("gemma3").to_dict(), vision_config=vision.to_dict(),
                       mm_tokens_per_image=4)
    torch.manual_seed(3)
    hf = Gemma3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        hf.get_input_embeddings().weight.mul_(0.1)  # as engine.models.tiny does for Gemma
    hf.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert any(k.startswith("vision_tower.") for k in keys) and any(k.startswith("language_model.") for k in keys)

    prompts = prompts_fn(3, [4, 15, 30], seed=9)
    expected = []
    with torch.no_grad():
        for p in prompts:
            out = hf.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
            expected.append(out[0, len(p):].tolist())
    llm = LLM(str(tmp_path), device="cpu")
    assert llm.engine.config.model.architecture == "gemma3_text"
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == expected


def _stack_experts(src: str, dst) -> None:
    """Rewrite a per-expert Mixtral checkpoint (experts.{e}.w1/w3/w2) into stacked gate_up_proj / down_proj."""
    state = load_file(f"{src}/model.safetensors")
    out = {k: v for k, v in state.items() if ".experts." not in k}
    layers = sorted({int(k.split(".")[2]) for k in state if ".experts." in k})
    for layer in layers:
        prefix = f"model.layers.{layer}.block_sparse_moe.experts"
        num = len({k.split(".")[5] for k in state if k.startswith(prefix)})
        out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([state[f"{prefix}.{e}.w1.weight"], state[f"{prefix}.{e}.w3.weight"]]) for e in range(num)])
        out[f"model.layers.{layer}.mlp.experts.down_proj"] = torch.stack(
            [state[f"{prefix}.{e}.w2.weight"] for e in range(num)])
        out[f"model.layers.{layer}.mlp.gate.weight"] = out.pop(f"model.layers.{layer}.block_sparse_moe.gate.weight")
    dst.mkdir()
    save_file(out, str(dst / "model.safetensors"))
    for name in ("config.json", "generation_config.json"):
        (dst / name).write_bytes((Path(src) / name).read_bytes())


def test_stacked_expert_checkpoint_loads_like_the_per_expert_one(tmp_path, prompts_fn):
    from engine.models.tiny import save_tiny_model

    per_expert = save_tiny_model(tmp_path / "per-expert", "mixtral", seed=5)
    _stack_experts(str(per_expert), tmp_path / "stacked")
    prompts = prompts_fn(2, [6, 25], seed=4)
    a = LLM(str(per_expert), device="cpu").generate(prompts, GREEDY)
    b = LLM(str(tmp_path / "stacked"), device="cpu").generate(prompts, GREEDY)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    model_a = LLM(str(per_expert), device="cpu").engine.runner.model
    model_b = LLM(str(tmp_path / "stacked"), device="cpu").engine.runner.model
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_a_checkpoint_missing_an_expert_is_refused(tmp_path):
    from engine.models.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "broken", "qwen3_moe", seed=5)
    state = load_file(path / "model.safetensors")
    del state["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing weights for \['layers.1.mlp.experts.gate_up_proj'\]"):
        LLM(str(path), device="cpu")


def test_an_unknown_expert_tensor_is_refused(tmp_path):
    from engine.models.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "odd", "olmoe", seed=5)
    state = load_file(path / "model.safetensors")
    state["model.layers.0.mlp.experts.0.w9.weight"] = torch.zeros(2, 2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="not an expert weight"):
        LLM(str(path), device="cpu")


def test_projections_built_from_quantized_data_are_neither_read_nor_required(tmp_path):
    # gguf (and awq / gptq / compressed-tensors) build the decoder projections from the quantized source, so
    # the loader skips the checkpoint's dense projection weights: a checkpoint without them loads, everything
    # else filled exactly; without the skip the same checkpoint is refused.
    from engine.config import EngineArgs
    from engine.models.loader import build_model, load_safetensors
    from engine.models.tiny import save_tiny_model
    from engine.quantization import WeightQuantConfig

    assert WeightQuantConfig("gguf", source="x.gguf").projections_from_source
    assert not WeightQuantConfig("int4").projections_from_source
    path = save_tiny_model(tmp_path / "tiny", "mistral", seed=5)  # the Llama-family code
    state = load_file(path / "model.safetensors")
    dense = {k: v for k, v in state.items() if not k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                             "o_proj.weight", "gate_proj.weight", "up_proj.weight",
                                                             "down_proj.weight"))}
    assert len(dense) < len(state)
    save_file(dense, str(path / "model.safetensors"))
    mc = EngineArgs(model=str(path), device="cpu", load_format="dummy").resolve().model
    model = build_model(mc, torch.device("cpu"))
    load_safetensors(model, path, skip_projections=True)
    assert torch.equal(model.embed_tokens.weight, state["model.embed_tokens.weight"])
    assert torch.equal(model.layers[1].input_layernorm.weight, state["model.layers.1.input_layernorm.weight"])
    with pytest.raises(ValueError, match="missing weights for"):
        load_safetensors(model, path)
