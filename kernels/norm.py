"""RMSNorm, optionally fused with the residual add before it: one pass over the row instead of three.

Grid (rows, inner): program (r, h) owns row x[r] (2-D input) or x[r, h] (3-D input, e.g. per-head q/k norms
on a strided view of the fused qkv projection). Per row of N elements, in fp32:
    with a delta:  s = round(x + delta)  stored back into x (the residual stream, updated in place)
                   y = round(round(s * rsqrt(mean(s^2) + eps)) * weight)
    without:       y = round(round(x * rsqrt(mean(x^2) + eps)) * weight)
where round() is to x's dtype: the roundings of transformers' and engine.models.layers' RMSNorm (normalise in
fp32, cast, then multiply by the weight in the activation dtype), so results differ from the torch path only
by the order of the sum of squares and rsqrt's last bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import Launch
from kernels.planning import next_power_of_2


@triton.jit
def _rms_norm_kernel(
    out_ptr, x_ptr, delta_ptr, weight_ptr, eps,
    stride_xr, stride_xh, stride_dr, stride_dh, stride_or, stride_oh,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_DELTA: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    inner = tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    x_row = x_ptr + row * stride_xr + inner * stride_xh
    x = tl.load(x_row + offs, mask=ok, other=0.0)
    if HAS_DELTA:
        d = tl.load(delta_ptr + row * stride_dr + inner * stride_dh + offs, mask=ok, other=0.0)
        x = (x.to(tl.float32) + d.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_row + offs, x, mask=ok)
    x32 = x.to(tl.float32)
    inv = tl.math.rsqrt(tl.sum(x32 * x32, 0) / N + eps)
    normed = (x32 * inv).to(out_ptr.dtype.element_ty)
    w = tl.load(weight_ptr + offs, mask=ok, other=0.0)
    y = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * stride_or + inner * stride_oh + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm_launch(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor,
                    delta: torch.Tensor | None = None) -> Launch:
    """x, out (and delta): [R, N] or [R, H, N] with the last dim contiguous. Arguments are already validated."""
    x3, out3 = _as_3d(x), _as_3d(out)
    d3 = _as_3d(delta) if delta is not None else x3
    n = x.shape[-1]
    block = next_power_of_2(n)
    args = (out3, x3, d3, weight, float(eps), x3.stride(0), x3.stride(1), d3.stride(0), d3.stride(1),
            out3.stride(0), out3.stride(1))
    kwargs = dict(launch_constants(n, delta is not None), num_warps=num_warps(block))
    return Launch(_rms_norm_kernel, (x3.shape[0], x3.shape[1]), args, kwargs)


def launch_constants(n: int, has_delta: bool) -> dict:
    """The kernel's constexpr arguments (shared with kernels.compile_report)."""
    return dict(N=n, BLOCK=next_power_of_2(n), HAS_DELTA=has_delta)


def num_warps(block: int) -> int:
    """About 8-16 elements per thread: a 4096-wide row gets 8 warps, a 128-wide head 1."""
    return max(1, min(16, block // 512))


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 2 else x
