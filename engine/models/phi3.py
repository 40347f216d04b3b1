"""Phi-3 (and Phi-3.5 / Phi-4-mini, which share its architecture) over the paged KV cache.

The checkpoint already stores q/k/v and gate/up fused (`qkv_proj`, `gate_up_proj`), the layout the Llama
modules use, so Phi-3 is the Llama decoder with its own RoPE:
- `partial_rotary_factor` < 1 (Phi-4-mini) rotates only the first part of each head;
- LongRoPE (`rope_type: longrope`, the 128k-context models) rescales the frequencies by `short_factor` or
  `long_factor`, and transformers switches between them per forward call: long once the call's longest position
  reaches `original_max_position_embeddings`. Here each sequence switches on its own context length in the
  step (`seq_lens`), which is the same choice for a prompt computed in one step and for every decode step.
  Keys already in the cache keep the factors they were computed with, as in transformers' own cache; a sequence
  whose prompt is computed in several chunks across that length, or recomputed after preemption, or that hits a
  prefix cached by a shorter sequence, can therefore differ from one transformers call over the whole prompt.
- Phi-3 mini-4k slides its attention over 2047 tokens (`sliding_window`): one window KV group.
"""

from __future__ import annotations

import torch

from ..attention import AttentionBackend
from .layers import RotaryEmbedding
from .llama import LlamaForCausalLM
from .paged import group_meta
from .variants import rope_tables


class Phi3Rotary(RotaryEmbedding):
    """RoPE tables for the rotary part of each head; with LongRoPE, the short-factor table for positions
    0..max_positions-1 followed by the long-factor one."""

    def build(self, device: torch.device) -> None:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        cfg = self.hf_config
        params = dict(getattr(cfg, "rope_parameters", None) or {})
        rope_type = params.get("rope_type", "default")
        self.rot_dim = int(self.head_dim * params.get("partial_rotary_factor", 1.0))
        if rope_type == "default":
            theta = float(params.get("rope_theta", 10000.0))
            inv = 1.0 / (theta ** (torch.arange(0, self.rot_dim, 2, dtype=torch.int64).float() / self.rot_dim))
            self.cos, self.sin = rope_tables(inv, 1.0, self.max_positions, device)
            return
        if rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"model: RoPE type {rope_type!r} is not supported")
        inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, torch.device("cpu"))
        self.cos, self.sin = rope_tables(inv.float(), float(scaling), self.max_positions, device)
        if rope_type == "longrope":
            self.long_after = int(params["original_max_position_embeddings"])
            long_inv, _ = ROPE_INIT_FUNCTIONS[rope_type](cfg, torch.device("cpu"), seq_len=self.long_after + 1)
            cos, sin = rope_tables(long_inv.float(), float(scaling), self.max_positions, device)
            self.cos, self.sin = torch.cat((self.cos, cos)), torch.cat((self.sin, sin))

    def forward(self, positions: torch.Tensor, dtype: torch.dtype, seq_ends: torch.Tensor | None = None):
        """cos and sin for these positions; `seq_ends` (each token's sequence length in this step) picks the
        long-factor table for sequences longer than the original context (LongRoPE only)."""
        if self.long_after is not None and seq_ends is not None:
            positions = positions + (seq_ends > self.long_after).to(positions.dtype) * self.max_positions
        half = self.rot_dim // 2
        return (self.cos[positions, :half].to(dtype).unsqueeze(1), self.sin[positions, :half].to(dtype).unsqueeze(1))


class Phi3ForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg, max_positions: int):
        super().__init__(cfg, max_positions)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rotary = Phi3Rotary(cfg, head_dim, max_positions)

    def forward(self, input_ids, positions, meta, backend: AttentionBackend):
        x = self.embed_tokens(input_ids)
        seq_ends = None
        if self.rotary.long_after is not None:
            m = group_meta(meta, 0)
            q_lens = m.cu_seqlens_q[1:] - m.cu_seqlens_q[:-1]
            # output_size keeps repeat_interleave from reading the device (CUDA-graph capture)
            seq_ends = torch.repeat_interleave(m.seq_lens, q_lens, output_size=positions.shape[0])
        rope = self.rotary(positions, x.dtype, seq_ends)
        for layer, (group, _) in zip(self.layers, self.kv_slots):
            x = layer(rope, x, group_meta(meta, group), backend)
        return self.norm(x)
