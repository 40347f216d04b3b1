"""Named model shapes: real architectures with no weights attached.

Benchmarks and the capacity planner use these with `load_format="dummy"` (random weights of the real shapes),
so no checkpoint has to be downloaded. Each entry builds a transformers config, the same object a checkpoint's
config.json would give.
"""

from __future__ import annotations

from typing import Callable

from transformers import LlamaConfig, PretrainedConfig, Qwen3Config

from .shapes_families import FAMILY_SHAPES

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _llama_3_2_1b() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={**_LLAMA3_ROPE, "factor": 32.0},
    )


def _llama_3_1_8b() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={**_LLAMA3_ROPE, "factor": 8.0},
    )


def _qwen3_0_6b() -> PretrainedConfig:
    return Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def _llama_7b() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=2048,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _smollm2_135m() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )


NAMED_SHAPES: dict[str, Callable[[], PretrainedConfig]] = {
    "llama-3.2-1b": _llama_3_2_1b,
    "llama-3.1-8b": _llama_3_1_8b,
    "qwen3-0.6b": _qwen3_0_6b,
    "llama-7b": _llama_7b,
    "smollm2-135m": _smollm2_135m,
}
NAMED_SHAPES.update(FAMILY_SHAPES)  # mixture-of-experts, sliding-window, Gemma, Phi (shapes_families.py)


def named_config(name: str) -> PretrainedConfig:
    """The transformers config of a named shape; ValueError lists the known names."""
    try:
        return NAMED_SHAPES[name]()
    except KeyError:
        raise ValueError(f"model_config: unknown shape {name!r}; known: {', '.join(sorted(NAMED_SHAPES))}") from None
