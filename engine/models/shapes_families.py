"""Named shapes of the mixture-of-experts, sliding-window, Gemma and Phi families (see `shapes.py`).

Each mirrors the published config.json of the checkpoint it is named after (text model only for Gemma 3), so
`--model-config NAME --load-format dummy` benchmarks the real architecture with random weights, and `kvserve plan`
counts its real parameters. `qwen3-moe-mini` is no published model: a small Qwen3-MoE that runs on a laptop CPU,
for the CPU benchmark (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Callable

from transformers import (Gemma2Config, Gemma3TextConfig, MistralConfig, MixtralConfig, OlmoeConfig, Phi3Config,
                          PretrainedConfig, Qwen3MoeConfig)


def _mixtral_8x7b() -> PretrainedConfig:
    return MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, num_local_experts=8,
        num_experts_per_tok=2, sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def _qwen3_30b_a3b() -> PretrainedConfig:
    return Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def _qwen3_moe_mini() -> PretrainedConfig:
    """8 layers, 16 experts of 256, top 4: ~40 M parameters, ~17 M active per token."""
    return Qwen3MoeConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1024, moe_intermediate_size=256, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=4096, rms_norm_eps=1e-6,
        num_experts=16, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def _olmoe_1b_7b() -> PretrainedConfig:
    return OlmoeConfig(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=4096, rms_norm_eps=1e-5, num_experts=64,
        num_experts_per_tok=8, norm_topk_prob=False, clip_qkv=None, tie_word_embeddings=False, pad_token_id=1,
        bos_token_id=None, eos_token_id=50279, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _mistral_7b() -> PretrainedConfig:
    """Mistral 7B v0.1: every layer slides over 4096 keys."""
    return MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _gemma_2_9b() -> PretrainedConfig:
    return Gemma2Config(
        vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
        num_key_value_heads=8, head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6,
        query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def _gemma3(**kw) -> PretrainedConfig:
    layers = kw.pop("num_hidden_layers")
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    return Gemma3TextConfig(
        num_hidden_layers=layers, layer_types=types, head_dim=256, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
        attn_logit_softcapping=None, final_logit_softcapping=None, tie_word_embeddings=True, bos_token_id=2,
        eos_token_id=[1, 106], pad_token_id=0, **kw,
    )


def _gemma_3_1b() -> PretrainedConfig:
    return _gemma3(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                   num_attention_heads=4, num_key_value_heads=1, sliding_window=512, max_position_embeddings=32768,
                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})


def _gemma_3_4b() -> PretrainedConfig:
    """The language model of Gemma 3 4B (its checkpoint also holds a vision tower, which kvserve skips)."""
    return _gemma3(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                   num_attention_heads=8, num_key_value_heads=4, sliding_window=1024, max_position_embeddings=131072,
                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                    "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                       "rope_theta": 1000000.0}})


def _phi_3_mini() -> PretrainedConfig:
    """Phi-3-mini-4k-instruct: fused qkv / gate_up, a 2047-key window."""
    return Phi3Config(
        vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, original_max_position_embeddings=4096,
        rms_norm_eps=1e-5, sliding_window=2047, tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
        pad_token_id=32000, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


FAMILY_SHAPES: dict[str, Callable[[], PretrainedConfig]] = {
    "mixtral-8x7b": _mixtral_8x7b,
    "qwen3-30b-a3b": _qwen3_30b_a3b,
    "qwen3-moe-mini": _qwen3_moe_mini,
    "olmoe-1b-7b": _olmoe_1b_7b,
    "mistral-7b": _mistral_7b,
    "gemma-2-9b": _gemma_2_9b,
    "gemma-3-1b": _gemma_3_1b,
    "gemma-3-4b": _gemma_3_4b,
    "phi-3-mini": _phi_3_mini,
}
