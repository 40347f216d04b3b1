"""Sparse mixture-of-experts decoders built on the Llama-family layers: Mixtral, Qwen3-MoE and OLMoE.

All three are a Llama decoder whose MLP is a `SparseMoE` (router + stacked experts). What differs:

    mixtral     experts of `intermediate_size`, top-k weights always renormalised; may slide (Mistral's window)
    qwen3_moe   experts of `moe_intermediate_size`, renormalised when `norm_topk_prob`; per-head q/k RMSNorm;
                layers in `mlp_only_layers` (or off the `decoder_sparse_step` grid) keep a dense MLP
    olmoe       renormalised when `norm_topk_prob` (off in OLMoE-1B-7B); q/k RMSNorm over the whole projection
                (not per head); optional `clip_qkv` clamping of q, k and v
"""

from __future__ import annotations

import torch.nn as nn

from .arch import num_experts
from .layers import RMSNorm, apply_rope
from .llama import MLP, Attention, DecoderLayer, LlamaForCausalLM
from .moe import SparseMoE


def is_sparse_layer(cfg, layer: int) -> bool:
    if cfg.model_type != "qwen3_moe":
        return True
    step = getattr(cfg, "decoder_sparse_step", 1) or 1
    return layer not in (getattr(cfg, "mlp_only_layers", None) or []) and (layer + 1) % step == 0


def moe_mlp(cfg) -> SparseMoE:
    inter = cfg.moe_intermediate_size if cfg.model_type == "qwen3_moe" else cfg.intermediate_size
    renormalize = True if cfg.model_type == "mixtral" else bool(getattr(cfg, "norm_topk_prob", False))
    return SparseMoE(cfg.hidden_size, inter, num_experts(cfg), cfg.num_experts_per_tok, renormalize)


class OlmoeAttention(Attention):
    """Llama attention with RMSNorm over the whole q and k projections (before the head split) and an optional
    clamp of q, k, v to [-clip_qkv, clip_qkv]."""

    def __init__(self, cfg, head_dim: int):
        super().__init__(cfg, head_dim)
        self.q_norm = RMSNorm(self.q_size, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.kv_size, cfg.rms_norm_eps)
        self.clip_qkv = getattr(cfg, "clip_qkv", None)

    def forward(self, rope, x, meta, backend):
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (y.clamp(-self.clip_qkv, self.clip_qkv) for y in (q, k, v))
        q = apply_rope(q.reshape(t, self.num_heads, self.head_dim), rope)
        k = apply_rope(k.reshape(t, self.num_kv_heads, self.head_dim), rope)
        v = v.reshape(t, self.num_kv_heads, self.head_dim).contiguous()
        backend.store_kv(k, v, self.key_cache, self.value_cache, meta)
        o = backend.attention(q, k, v, self.key_cache, self.value_cache, meta, self.scale)
        return self.o_proj(o.reshape(t, self.q_size))


class MoEDecoderLayer(DecoderLayer):
    def __init__(self, cfg, head_dim: int, layer: int):
        super().__init__(cfg, head_dim)
        if cfg.model_type == "olmoe":
            self.self_attn = OlmoeAttention(cfg, head_dim)
        self.mlp = moe_mlp(cfg) if is_sparse_layer(cfg, layer) else MLP(cfg)


class MoEForCausalLM(LlamaForCausalLM):
    """The Llama decoder with `MoEDecoderLayer`s. Built on the meta device like every model, so the dense layers
    the parent constructor makes first cost nothing before they are replaced."""

    def __init__(self, cfg, max_positions: int):
        super().__init__(cfg, max_positions)
        if cfg.model_type == "qwen3_moe" and getattr(cfg, "moe_intermediate_size", None) is None:
            raise ValueError("model: a qwen3_moe config needs moe_intermediate_size")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.layers = nn.ModuleList(MoEDecoderLayer(cfg, head_dim, i) for i in range(cfg.num_hidden_layers))
