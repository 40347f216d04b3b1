"""Rotary position embedding applied in place to q and k in one launch, in the half-by-half layout.

The layout is transformers' Llama form (and engine.models.layers.apply_rope's): a head's D values are two halves
x1 = x[:D/2], x2 = x[D/2:], and
    x1' = x1 * cos - x2 * sin,    x2' = x2 * cos + x1 * sin
with cos, sin [T, D/2] already in x's dtype (the first halves of the model's tables at each token's position).
Every product, difference and sum is rounded to x's dtype exactly as torch's separate element-wise ops round
them, and the launch turns off multiply-add contraction, so the result is bit-identical to the torch path.

Grid (T,): program t rotates every query head and every key head of token t, loading its cos/sin once.
q and k may be strided views of one fused qkv projection output (rows of D contiguous).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import Launch
from kernels.planning import next_power_of_2


@triton.jit
def _rotate_heads(x_ptr, stride_h, cos, sin, offs_h, offs_d, ok, HALF: tl.constexpr):
    ptr1 = x_ptr + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(ptr1, mask=ok, other=0.0)
    x2 = tl.load(ptr1 + HALF, mask=ok, other=0.0)
    dtype = x1.dtype
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    a = (x1f * cos).to(dtype).to(tl.float32)
    b = (x2f * sin).to(dtype).to(tl.float32)
    c = (x2f * cos).to(dtype).to(tl.float32)
    e = (x1f * sin).to(dtype).to(tl.float32)
    tl.store(ptr1, (a - b).to(dtype), mask=ok)
    tl.store(ptr1 + HALF, (c + e).to(dtype), mask=ok)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
    HEADS_PAD: tl.constexpr, KV_HEADS_PAD: tl.constexpr, HALF_PAD: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, HALF_PAD)
    d_ok = offs_d < HALF
    cos = tl.load(cos_ptr + t * stride_ct + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + t * stride_st + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    offs_h = tl.arange(0, HEADS_PAD)
    _rotate_heads(q_ptr + t * stride_qt, stride_qh, cos, sin, offs_h, offs_d,
                  (offs_h < NUM_HEADS)[:, None] & d_ok[None, :], HALF)
    offs_kh = tl.arange(0, KV_HEADS_PAD)
    _rotate_heads(k_ptr + t * stride_kt, stride_kh, cos, sin, offs_kh, offs_d,
                  (offs_kh < NUM_KV_HEADS)[:, None] & d_ok[None, :], HALF)


def rope_launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Launch:
    """q [T, H, D], k [T, KVH, D], cos/sin [T, D/2] (or [T, 1, D/2]). Arguments are already validated."""
    num_tokens, num_heads, head_dim = q.shape
    args = (q, k, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0))
    constants = launch_constants(num_heads, k.shape[1], head_dim)
    elements = constants["HEADS_PAD"] * constants["HALF_PAD"]
    return Launch(_rope_kernel, (num_tokens,), args,
                  dict(constants, num_warps=max(1, min(8, elements // 256)), enable_fp_fusion=False))


def launch_constants(num_heads: int, num_kv_heads: int, head_dim: int) -> dict:
    """The kernel's constexpr arguments (shared with kernels.compile_report)."""
    half = head_dim // 2
    return dict(NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HALF=half, HEADS_PAD=next_power_of_2(num_heads),
                KV_HEADS_PAD=next_power_of_2(num_kv_heads), HALF_PAD=next_power_of_2(half))
