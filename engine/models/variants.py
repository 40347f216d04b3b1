"""Layer variants of the newer families, beside the Llama-family ones in `layers.py`: Gemma's RMSNorm (scaled by
1 + weight, in fp32), GeGLU, logit soft-capping, and RoPE tables for one layer type (Gemma 3's local and global
bases).

Numerics follow transformers step by step, as `layers.py` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import RMSNorm, RotaryEmbedding


class GemmaRMSNorm(RMSNorm):
    """x / rms(x) * (1 + weight), the product taken in fp32 before the cast (Llama casts first). Its weight is
    stored as the offset from 1, so zeros is the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)


def gelu_tanh_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """GeGLU: gelu(gate, tanh approximation) * up, for a fused [.., 2I] gate/up projection."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh").mul_(up)


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(logits / cap), as transformers computes it (divide, tanh, multiply)."""
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


class LayerTypeRotary(RotaryEmbedding):
    """RoPE tables for one entry of a per-layer-type `rope_parameters` dict (Gemma 3: "sliding_attention" uses
    a local base, "full_attention" the global one, possibly scaled), through transformers' RoPE initialisers."""

    def __init__(self, hf_config, head_dim: int, max_positions: int, layer_type: str):
        super().__init__(hf_config, head_dim, max_positions)
        self.layer_type = layer_type

    def build(self, device: torch.device) -> None:
        params = self.hf_config.rope_parameters[self.layer_type]
        rope_type = params.get("rope_type", "default")
        if rope_type == "default":
            theta = float(params["rope_theta"])
            inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim))
            scaling = 1.0
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            if rope_type not in ROPE_INIT_FUNCTIONS:
                raise ValueError(f"model: RoPE type {rope_type!r} is not supported")
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](self.hf_config, torch.device("cpu"),
                                                               layer_type=self.layer_type)
        self.cos, self.sin = rope_tables(inv_freq.float(), float(scaling), self.max_positions, device)


def rope_tables(inv_freq: torch.Tensor, scaling: float, max_positions: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [max_positions, 2 x len(inv_freq)] in fp32, as transformers' rotary modules compute them."""
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(device), (emb.sin() * scaling).to(device)
