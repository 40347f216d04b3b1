"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over a paged KV cache.

Differences between the family members are config switches: Qwen2 has biases on q/k/v, Qwen3 normalises
q and k per head before RoPE, Llama 3 scales RoPE frequencies, some models tie the LM head to the
embeddings. Tokens arrive flattened ([T] ids and positions for the whole batch); attention reads and writes
the paged cache through the backend and metadata passed in explicitly.

q/k/v and gate/up projections are fused into one matmul each (the loader concatenates the checkpoint's
separate weights), which is faster and is the layout tensor parallelism shards: with a `TPContext` each
module holds its rank's heads, MLP columns and vocabulary chunk (`engine.models.parallel`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..attention import AttentionBackend, AttentionMetadata
from .layers import Linear, RMSNorm, RotaryEmbedding, apply_rope_heads, apply_rope_qk, linear, silu_and_mul
from .paged import bind_kv_cache, group_meta, kv_slots
from .parallel import TPContext, embedding, row_linear


class Attention(nn.Module):
    def __init__(self, cfg, head_dim: int, tp: TPContext | None = None):
        super().__init__()
        self.num_heads = cfg.num_attention_heads if tp is None else tp.shard.num_heads
        self.num_kv_heads = (getattr(cfg, "num_key_value_heads", None) or self.num_heads) if tp is None \
            else tp.shard.num_kv_heads
        self.head_dim = head_dim
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        bias = cfg.model_type == "qwen2" or bool(getattr(cfg, "attention_bias", False))
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = row_linear(self.q_size, cfg.hidden_size, bool(getattr(cfg, "attention_bias", False)), tp)
        self.qk_norm = cfg.model_type in ("qwen3", "qwen3_moe")
        if self.qk_norm:
            self.q_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.scale = head_dim ** -0.5
        self.key_cache: torch.Tensor | None = None
        self.value_cache: torch.Tensor | None = None
        self.kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None  # an 8-bit cache's K and V scales

    def forward(self, rope, x, meta: AttentionMetadata, backend: AttentionBackend):
        t, qk_size = x.shape[0], self.q_size + self.kv_size
        qkv = self.qkv_proj(x)
        v = qkv[:, qk_size:].view(t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q = self.q_norm(qkv[:, :self.q_size].view(t, self.num_heads, self.head_dim))
            k = self.k_norm(qkv[:, self.q_size:qk_size].view(t, self.num_kv_heads, self.head_dim))
            q, k = apply_rope_qk(q, k, rope)
        else:  # q's and k's heads side by side, rotated together
            q, k = apply_rope_heads(qkv[:, :qk_size].view(t, -1, self.head_dim), self.num_heads, rope)
        if v.stride(-1) != 1:  # a column-major skinny-GEMM output (CPU); the kernels want rows of D contiguous
            v = v.contiguous()
        if self.kv_scales is None:
            backend.store_kv(k, v, self.key_cache, self.value_cache, meta)
            o = backend.attention(q, k, v, self.key_cache, self.value_cache, meta, self.scale)
        else:
            backend.store_kv(k, v, self.key_cache, self.value_cache, meta, kv_scales=self.kv_scales)
            o = backend.attention(q, k, v, self.key_cache, self.value_cache, meta, self.scale, kv_scales=self.kv_scales)
        return self.o_proj(o.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg, tp: TPContext | None = None):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size if tp is None else tp.shard.intermediate_size
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * self.intermediate_size, bias=bias)
        self.down_proj = row_linear(self.intermediate_size, cfg.hidden_size, bias, tp)

    def forward(self, x):
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, head_dim: int, tp: TPContext | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, head_dim, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, tp)

    def forward(self, rope, x, meta, backend):
        # the residual stream is updated in place: it is this forward's own tensor (the embedding's output)
        h = self.post_attention_layernorm.add_forward(x, self.self_attn(rope, self.input_layernorm(x), meta, backend))
        return x.add_(self.mlp(h))


class LlamaForCausalLM(nn.Module):
    """`forward(input_ids[T], positions[T], meta, backend) -> hidden[T, hidden]`; `compute_logits` applies
    the final projection to the rows that need sampling only (under tensor parallelism: on rank 0; the
    other ranks take part in the gather and get None)."""

    def __init__(self, cfg, max_positions: int, tp: TPContext | None = None):
        super().__init__()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.config = cfg
        self.tp = tp
        self.embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.rotary = RotaryEmbedding(cfg, head_dim, max_positions)
        self.layers = nn.ModuleList(DecoderLayer(cfg, head_dim, tp) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.kv_slots = kv_slots(cfg, max_positions)  # sliding-window layers may form their own KV group
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        if not self.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size if tp is None else tp.shard.vocab_rows, bias=False)
        self.quant_head: nn.Module | None = None  # an int8 LM head, set by quantization.apply

    def bind_kv_cache(self, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        bind_kv_cache([layer.self_attn for layer in self.layers], caches, self.kv_slots)

    def forward(self, input_ids, positions, meta: AttentionMetadata, backend: AttentionBackend):
        x = self.embed_tokens(input_ids)
        rope = self.rotary(positions, x.dtype)  # once per step, shared by every layer
        for layer, (group, _) in zip(self.layers, self.kv_slots):
            x = layer(rope, x, group_meta(meta, group), backend)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        if self.quant_head is not None:
            logits = self.quant_head(hidden)
        else:
            logits = linear(hidden, self.embed_tokens.weight if self.tie_word_embeddings else self.lm_head.weight)
        return logits if self.tp is None else self.tp.gather_logits(logits)
