"""Shared fixtures for engine tests: random tiny HF models of each supported architecture, and HF greedy
reference generation (the correctness oracle)."""

from __future__ import annotations

import pytest
import torch

TINY_VOCAB = 512


def tiny_hf_config(arch: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.3, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        # untied head, llama3-style RoPE scaling
        return LlamaConfig(**common, tie_word_embeddings=False,
                           rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 64})
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        # head_dim deliberately not hidden_size / heads; q/k RMSNorm
        return Qwen3Config(**{**common, "num_attention_heads": 6, "num_key_value_heads": 3}, head_dim=32,
                           tie_word_embeddings=True)
    raise ValueError(arch)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """arch -> directory of a saved random tiny model (built once per session)."""
    from transformers import AutoModelForCausalLM

    cache: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in cache:
            torch.manual_seed(1234)
            model = AutoModelForCausalLM.from_config(tiny_hf_config(arch), dtype=torch.float32)
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(path)
            cache[arch] = str(path)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def hf_greedy_fn():
    return hf_greedy


@pytest.fixture(scope="session")
def prompts_fn():
    return random_prompts


def hf_greedy(model_dir: str, prompts: list[list[int]], max_new_tokens: int, stop_at_eos: bool = False) -> list[list[int]]:
    """HF transformers' own greedy generation, one prompt at a time, fp32 on the CPU: the oracle."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id if stop_at_eos else None
    outs = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=0, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            outs.append(out[0, len(ids):].tolist())
    return outs


def random_prompts(n: int, lengths: list[int], vocab: int = TINY_VOCAB, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(n)]
