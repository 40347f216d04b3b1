"""Gemma 2 and Gemma 3 (text) over the paged KV cache.

What sets them apart from the Llama family, all as transformers computes it:
- RMSNorm scales by (1 + weight), in fp32 (`GemmaRMSNorm`), and every layer has four of them: before and after
  attention, before and after the MLP (the post-norms apply to the sub-layer's output, before the residual add);
- the embedding is multiplied by sqrt(hidden_size) (rounded to the activation dtype first);
- GeGLU MLP (gelu, tanh approximation);
- attention scale query_pre_attn_scalar^-1/2 instead of head_dim^-1/2;
- layers alternate local (sliding-window) and global attention (`layer_types`): 1:1 in Gemma 2, 5:1 in Gemma 3;
  the two kinds form separate KV-cache groups (`engine.core.kv_groups`);
- Gemma 2 soft-caps attention logits (cap * tanh(s / cap), before the mask) and final logits;
- Gemma 3 normalises q and k per head (Gemma RMSNorm) before RoPE, and local and global layers use different
  RoPE tables (`rope_parameters` per layer type: base 10k locally, 1M globally, possibly scaled).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..attention import AttentionBackend, AttentionMetadata
from .layers import Linear, RotaryEmbedding, apply_rope_qk, linear
from .paged import bind_kv_cache, group_meta, kv_slots
from .variants import GemmaRMSNorm, LayerTypeRotary, gelu_tanh_and_mul, soft_cap

_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


def _layer_types(cfg) -> list[str]:
    return list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)


class GemmaAttention(nn.Module):
    def __init__(self, cfg, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, head_dim
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        bias = bool(getattr(cfg, "attention_bias", False))
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=bias)
        self.qk_norm = cfg.model_type == "gemma3_text"
        if self.qk_norm:
            self.q_norm = GemmaRMSNorm(head_dim, cfg.rms_norm_eps)
            self.k_norm = GemmaRMSNorm(head_dim, cfg.rms_norm_eps)
        self.scale = float(cfg.query_pre_attn_scalar) ** -0.5
        self.softcap = getattr(cfg, "attn_logit_softcapping", None)
        self.key_cache: torch.Tensor | None = None
        self.value_cache: torch.Tensor | None = None

    def forward(self, rope, x, meta: AttentionMetadata, backend: AttentionBackend):
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        v = v.reshape(t, self.num_kv_heads, self.head_dim).contiguous()
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope_qk(q, k, rope)
        backend.store_kv(k, v, self.key_cache, self.value_cache, meta)
        o = backend.attention(q, k, v, self.key_cache, self.value_cache, meta, self.scale, logit_softcap=self.softcap)
        return self.o_proj(o.reshape(t, self.q_size))


class GemmaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
        if act not in _GELU_TANH:
            raise ValueError(f"model: Gemma activation {act!r} is not supported ({', '.join(_GELU_TANH)})")
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(gelu_tanh_and_mul(self.gate_up_proj(x)))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, cfg, head_dim: int):
        super().__init__()
        eps = cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.self_attn = GemmaAttention(cfg, head_dim)
        self.post_attention_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.mlp = GemmaMLP(cfg)
        self.post_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)

    def forward(self, rope, x, meta, backend):
        x = x + self.post_attention_layernorm(self.self_attn(rope, self.input_layernorm(x), meta, backend))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class GemmaForCausalLM(nn.Module):
    """`forward(input_ids[T], positions[T], meta, backend) -> hidden[T, hidden]`; `compute_logits` projects
    with the (tied) embedding and soft-caps."""

    def __init__(self, cfg, max_positions: int):
        super().__init__()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_scale = cfg.hidden_size ** 0.5
        self.layer_types = _layer_types(cfg)
        params = getattr(cfg, "rope_parameters", None) or {}
        if set(self.layer_types) <= set(params):  # Gemma 3: one RoPE table per layer type
            self.rotary = nn.ModuleDict({t: LayerTypeRotary(cfg, head_dim, max_positions, t)
                                         for t in sorted(set(self.layer_types))})
        else:
            self.rotary = nn.ModuleDict({"all": RotaryEmbedding(cfg, head_dim, max_positions)})
        self.layers = nn.ModuleList(GemmaDecoderLayer(cfg, head_dim) for _ in range(cfg.num_hidden_layers))
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.kv_slots = kv_slots(cfg, max_positions)
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", True))
        if not self.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.quant_head: nn.Module | None = None  # an int8 LM head, set by quantization.apply

    def bind_kv_cache(self, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        bind_kv_cache([layer.self_attn for layer in self.layers], caches, self.kv_slots)

    def forward(self, input_ids, positions, meta, backend: AttentionBackend):
        x = self.embed_tokens(input_ids)
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)  # the scale is rounded to the dtype first, as in HF
        ropes = {name: rotary(positions, x.dtype) for name, rotary in self.rotary.items()}
        for layer, layer_type, (group, _) in zip(self.layers, self.layer_types, self.kv_slots):
            rope = ropes[layer_type] if layer_type in ropes else ropes["all"]
            x = layer(rope, x, group_meta(meta, group), backend)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.quant_head is not None:
            return soft_cap(self.quant_head(hidden), self.final_softcap)
        weight = self.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight
        return soft_cap(linear(hidden, weight), self.final_softcap)
