"""Building blocks shared by the Llama-family models: RMSNorm, rotary embedding, gated MLP activation.

Numerics follow transformers' implementations step by step (fp32 normalisation, then cast, then weight;
cos/sin computed in fp32 and cast to the activation dtype), so fp32 outputs match HF to rounding.
On CUDA, RMSNorm (with the residual add before it), RoPE and SiLU-and-mul each run as one fused Triton kernel
(kernels.rms_norm / add_rms_norm / rope_ / silu_and_mul, same roundings; RoPE bit-identical); the CPU path is
the torch code below, written for few ops per call (one-stream decode runs ~40 small ops per layer, and each
costs a few microseconds of dispatch), each change bit-identical to the op sequence it replaces.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels


# Up to this many rows, MKL's CPU GEMM computes x @ W^T 1.2-3x faster as (W @ x^T)^T (SmolLM2's shapes on the
# 2-core CI machine: scripts/bench_cpu_linear.py, docs/benchmarks.md "CPU linear layers"); at prefill sizes
# (2048 rows) F.linear is ~10% faster for the projections.
SKINNY_ROWS = 256


def gemm_rows(m: int) -> int:
    """The row count a skinny CPU GEMM of m rows is padded to. MKL's skinny kernels are fast for even counts
    up to 4 and for multiples of 8, and up to ~2x slower just below them (15 rows take ~1.7x as long as 16):
    padding with zero rows that are then dropped costs a tiny copy and computes the same dot products for
    the real rows."""
    if m <= 4:
        return m + (m & 1)
    if m <= 6:
        return m
    return -(-m // 8) * 8


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias), choosing the faster GEMM orientation and row count for skinny CPU
    batches. The skinny path returns a transposed (column-major) view; every consumer in the model accepts one."""
    m = x.shape[0]
    if x.device.type == "cpu" and x.dim() == 2 and m <= SKINNY_ROWS:
        rows = gemm_rows(m)
        if rows != m:
            x = torch.cat((x, x.new_zeros(rows - m, x.shape[1])))
        out = (weight @ x.t()).t()[:m]
        return out if bias is None else out + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose forward uses `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return kernels.rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32:
            # torch's CPU rms_norm runs transformers' op sequence (pow, mean, + eps, rsqrt, x * r, * weight) in
            # C++: bit-identical in fp32 (test_rms_norm_in_fp32_is_the_op_sequence_bit_for_bit), ~10 us less
            # Python dispatch per call. Other dtypes differ: it multiplies by the weight before the cast.
            weight = self.weight
            return torch.rms_norm(x, weight.shape, weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(dtype).mul_(self.weight)  # a fresh tensor either way; a * b == b * a exactly

    def add_forward(self, residual: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """residual += delta in place, then the norm of the new residual (one pass on CUDA)."""
        if residual.is_cuda:
            return kernels.add_rms_norm(residual, delta, self.weight, self.eps)
        return self.forward(residual.add_(delta))


def rope_inv_freq(hf_config, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention scaling for the config's RoPE variant (default, llama3, linear,
    yarn, ...), using transformers' own RoPE initialisers for everything but the default."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
    if rope_type == "default":
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"model: RoPE type {rope_type!r} is not supported")
    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return inv.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """cos/sin tables (fp32) for every position up to max_positions, indexed by each token's position.

    The tables are built by `build(device)`, so the module can be created on the meta device."""

    def __init__(self, hf_config, head_dim: int, max_positions: int):
        super().__init__()
        self.hf_config, self.head_dim, self.max_positions = hf_config, head_dim, max_positions
        self.cos = self.sin = None

    def build(self, device: torch.device) -> None:
        inv_freq, scaling = rope_inv_freq(self.hf_config, self.head_dim)
        freqs = torch.arange(self.max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * scaling).to(device)
        self.sin = (emb.sin() * scaling).to(device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (first halves, [T, 1, D/2]) for these positions; computed once per step, used by every
        layer through `apply_rope`."""
        half = self.head_dim // 2
        return (self.cos[positions, :half].to(dtype).unsqueeze(1), self.sin[positions, :half].to(dtype).unsqueeze(1))


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """transformers' `x * cos + rotate_half(x) * sin` (cos and sin repeat their first half) computed half by
    half: the same products and sums, so bit-identical, with half the multiplications and no negated copy."""
    cos, sin = rope
    half = x.shape[-1] // 2
    if cos.shape[-1] != half:  # partial rotary (Phi-4-mini): only the first 2 x cos.shape[-1] dims rotate
        rot = 2 * cos.shape[-1]
        return torch.cat((apply_rope(x[..., :rot], rope), x[..., rot:]), dim=-1)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rope_heads(qk: torch.Tensor, num_q_heads: int, rope: tuple[torch.Tensor, torch.Tensor]):
    """q and k rotated, given as one [T, H + KVH, D] view over the adjacent q and k columns of a qkv projection.
    On the CPU one set of elementwise ops rotates both (the same ops on every element as `apply_rope` of each,
    so bit-identical, with half the per-op overhead); on CUDA `apply_rope_qk` of the two views."""
    q, k = qk[:, :num_q_heads], qk[:, num_q_heads:]
    if qk.is_cuda:
        return apply_rope_qk(q, k, rope)
    out = apply_rope(qk, rope)
    return out[:, :num_q_heads], out[:, num_q_heads:]


def apply_rope_qk(q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
    """`apply_rope` to q and k. On CUDA one kernel rotates both in place: they are views of the step's own qkv
    projection output, which nothing else reads. Partial rotary (cos narrower than half a head) stays on torch."""
    if q.is_cuda and 2 * rope[0].shape[-1] == q.shape[-1]:
        kernels.rope_(q, k, *rope)
        return q, k
    return apply_rope(q, rope), apply_rope(k, rope)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if gate_up.is_cuda:
        return kernels.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)  # in place on SiLU's fresh output: one large temporary fewer
