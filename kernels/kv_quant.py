"""The 8-bit KV-cache formats inside the kernels: quantize a token's heads on store, dequantize a tile on load.

Format (the same as kernels.reference.quantize_kv_ref, which the tests hold these to bit for bit): for one
token's key (or value) in one KV head, a vector x of head_dim elements,

    scale = max(max|x|, 1e-12) / QMAX        one fp32 per (token, KV head), stored beside the codes
    code  = round_to_nearest_even(x / scale) int8 (QMAX 127) or fp8 e4m3 (448) / e5m2 (57344)
    x    ~= code * scale                     dequantized in fp32, rounded once to the query's dtype

Two details make the kernel's codes bit-identical to torch's (and so to the CPU path and the reference):

- x / scale is an IEEE division (`tl.math.div_rn`); Triton's plain `/` on fp32 may lower to an approximate
  one on a GPU.
- fp8 codes are rounded in fp32 arithmetic first, to a multiple of the format's spacing at that magnitude,
  so the final cast to fp8 has nothing left to round. The hardware cast (cvt.rn) would round correctly by
  itself, but Triton's interpreter (3.9) does not: its fp32 -> fp8 conversion rounds ties up and loses the
  carry into the exponent (7.84 becomes 4.0 in e4m3), so without the pre-rounding nothing fp8 could be
  checked on the CPU. The pre-rounding costs a few integer operations per element in a memory-bound store.
  int8 codes are rounded the same way (half to even, like torch.round), then converted exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class CodeFormat:
    """The constexprs of one 8-bit format: QMAX, and for fp8 the mantissa bits and smallest normal exponent
    (FP8_MANT 0 means int8)."""

    qmax: float
    fp8_mant: int
    fp8_emin: int


CODE_FORMATS = {
    torch.int8: CodeFormat(127.0, 0, 0),
    torch.float8_e4m3fn: CodeFormat(448.0, 3, -6),
    torch.float8_e5m2: CodeFormat(57344.0, 2, -14),
}


def code_constants(cache_dtype: torch.dtype) -> dict:
    """The store kernel's quantization constexprs for a cache of `cache_dtype` (QUANT False: not 8-bit)."""
    fmt = CODE_FORMATS.get(cache_dtype)
    if fmt is None:
        return dict(QUANT=False, QMAX=1.0, FP8_MANT=0, FP8_EMIN=0)
    return dict(QUANT=True, QMAX=fmt.qmax, FP8_MANT=fmt.fp8_mant, FP8_EMIN=fmt.fp8_emin)


@triton.jit
def round_half_even(y):
    """Round fp32 values to the nearest integer, ties to even (torch.round), in exact fp32 arithmetic."""
    r = tl.floor(y)
    d = y - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), r + 1.0, r)


@triton.jit
def quantize_heads(x, QMAX: tl.constexpr, FP8_MANT: tl.constexpr, FP8_EMIN: tl.constexpr):
    """x [heads, D] fp32 (padding columns 0) -> (codes [heads, D] as fp32 values the 8-bit type holds
    exactly, scales [heads] fp32)."""
    amax = tl.maximum(tl.max(tl.abs(x), 1), 1e-12)
    scale = tl.math.div_rn(amax, tl.full(amax.shape, QMAX, tl.float32))
    y = tl.math.div_rn(x, scale[:, None])
    if FP8_MANT == 0:
        y = tl.minimum(tl.maximum(round_half_even(y), -QMAX), QMAX)
    else:
        y = tl.minimum(tl.maximum(y, -QMAX), QMAX)
        # spacing of the fp8 values at |y|: 2^(exponent - mantissa bits), constant below the normal range
        bits = y.to(tl.int32, bitcast=True)
        e = tl.maximum(((bits >> 23) & 0xFF) - 127, FP8_EMIN) - FP8_MANT
        inv_ulp = ((127 - e) << 23).to(tl.float32, bitcast=True)
        ulp = ((127 + e) << 23).to(tl.float32, bitcast=True)
        r = round_half_even(tl.abs(y) * inv_ulp) * ulp
        y = tl.where(bits < 0, -r, r)  # keeps the sign of zero, as the cast of y would
    return y, scale
