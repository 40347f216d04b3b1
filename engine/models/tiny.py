"""Random tiny models saved as HF directories, for tests and demos (no download, milliseconds a step).

`save_tiny_llama` writes a tiny Llama; `tiny_config(arch)` / `save_tiny_model(out, arch)` cover every other
supported family with configs chosen to exercise what sets it apart: small sliding windows (so test prompts and
generations run past them), experts with top-k routing, soft-capping strong enough to matter, local and global
RoPE bases, LongRoPE. With `tokenizer=True` the directory gets the default model's tokenizer files, so text
prompts, chat templates and token ids are realistic; the vocabulary then has to be the default model's (49,152).
"""

from __future__ import annotations

import shutil
from pathlib import Path

DEFAULT_VOCAB = 49152
TINY_ARCHS = ("mistral", "mixtral", "qwen3_moe", "olmoe", "gemma2", "gemma3", "phi3", "phi3_longrope")


def _copy_tokenizer(out: Path) -> None:
    from .resolve import resolve_model

    tokenizer_dir = resolve_model(None).path
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)


def save_tiny_llama(out: Path, *, vocab_size: int = DEFAULT_VOCAB, max_position_embeddings: int = 512,
                    tokenizer: bool = True, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer and vocab_size != DEFAULT_VOCAB:
        raise ValueError(f"vocab_size: the default tokenizer needs {DEFAULT_VOCAB}, got {vocab_size}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=max_position_embeddings,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    out = Path(out)
    LlamaForCausalLM(cfg).save_pretrained(out)
    if tokenizer:
        _copy_tokenizer(out)
    return out


def tiny_config(arch: str, vocab_size: int = 512, max_position_embeddings: int = 512):
    """A transformers config of `arch` (one of TINY_ARCHS) small enough for a CPU test."""
    from transformers import (Gemma2Config, Gemma3TextConfig, MistralConfig, MixtralConfig, OlmoeConfig, Phi3Config,
                              Qwen3MoeConfig)

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                  initializer_range=0.3, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    if arch == "mistral":  # every layer slides over 20 keys
        return MistralConfig(**common, sliding_window=20, head_dim=16, tie_word_embeddings=False)
    if arch == "mixtral":  # 4 experts, top 2, always renormalised
        return MixtralConfig(**{**common, "intermediate_size": 48}, num_local_experts=4, num_experts_per_tok=2,
                             tie_word_embeddings=False)
    if arch == "qwen3_moe":  # 8 experts, top 3 renormalised; layer 0 keeps a dense MLP; per-head q/k norm
        return Qwen3MoeConfig(**{**common, "num_hidden_layers": 3}, head_dim=24, moe_intermediate_size=32,
                              num_experts=8, num_experts_per_tok=3, norm_topk_prob=True, mlp_only_layers=[0],
                              decoder_sparse_step=1, tie_word_embeddings=True)
    if arch == "olmoe":  # 8 experts, top 2 NOT renormalised; q/k norm over the projection; clip_qkv
        return OlmoeConfig(**{**common, "intermediate_size": 40}, num_experts=8, num_experts_per_tok=2,
                           norm_topk_prob=False, clip_qkv=4.0, tie_word_embeddings=False)
    if arch == "gemma2":  # local, global, local (1:1 alternation); strong soft-caps; window 16
        return Gemma2Config(**{**common, "num_hidden_layers": 3}, head_dim=16, sliding_window=16,
                            query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                            tie_word_embeddings=True)
    if arch == "gemma3":  # three local layers then a global one; window 12; scaled 1M-base global RoPE; q and k
        # are normalised per head, so a small query_pre_attn_scalar keeps attention sharp (diverse greedy output)
        return Gemma3TextConfig(**{**common, "num_hidden_layers": 4}, head_dim=16, sliding_window=12,
                                query_pre_attn_scalar=2,
                                layer_types=["sliding_attention"] * 3 + ["full_attention"],
                                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                 "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                    "rope_theta": 1000000.0}},
                                tie_word_embeddings=True)
    if arch in ("phi3", "phi3_longrope"):
        # phi3: LongRoPE that never switches to its long factors in a test (original length 256) and a
        # 28-key window; phi3_longrope: switches at 40 tokens, partial rotary (Phi-4-mini style), no window
        long = arch == "phi3_longrope"
        rot = 12 if long else 16
        original = 40 if long else 256
        rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": original,
                "short_factor": [1.0 + 0.1 * i for i in range(rot // 2)],
                "long_factor": [4.0 + 8.0 * i for i in range(rot // 2)]}
        if long:
            rope["partial_rotary_factor"] = 0.75
        return Phi3Config(**common, sliding_window=None if long else 28, rope_parameters=rope, pad_token_id=0,
                          original_max_position_embeddings=original, tie_word_embeddings=False)
    raise ValueError(f"arch: unknown tiny architecture {arch!r}; known: {', '.join(TINY_ARCHS)}")


def save_tiny_model(out: Path, arch: str, *, vocab_size: int = 512, tokenizer: bool = False, seed: int = 0,
                    max_position_embeddings: int = 512) -> Path:
    """A random `tiny_config(arch)` model saved with transformers' own `save_pretrained` (its checkpoint layout)."""
    import torch
    from transformers import AutoModelForCausalLM

    if tokenizer and vocab_size != DEFAULT_VOCAB:
        raise ValueError(f"vocab_size: the default tokenizer needs {DEFAULT_VOCAB}, got {vocab_size}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size, max_position_embeddings), dtype=torch.float32)
    with torch.no_grad():  # norms start as the identity; perturb them so that their form (w or 1 + w) matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
        if arch.startswith("gemma"):
            # Gemma multiplies embeddings by sqrt(hidden): at the test init they would drown every layer's
            # output, and greedy decoding would repeat one token whatever attention computes
            model.get_input_embeddings().weight.mul_(0.1)
    out = Path(out)
    model.save_pretrained(out)
    if tokenizer:
        _copy_tokenizer(out)
    return out
