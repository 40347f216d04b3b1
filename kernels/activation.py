"""SiLU-and-mul: the gated MLP's activation, out = silu(gate) * up for gate_up = [gate | up] ([T, 2I] -> [T, I]).

One pass instead of torch's three (slice, SiLU into a temporary, multiply). In fp32 per element, rounded to the
activation dtype where torch's two ops round: s = round(g / (1 + exp(-g))), out = round(s * up).
Grid (T, ceil(I / BLOCK)): a 14336-wide row (Llama-3.1-8B) is 14 programs, so even a decode batch of one
token spreads over several SMs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.launch import Launch
from kernels.planning import next_power_of_2

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(out_ptr, gate_up_ptr, stride_gt, stride_ot, N: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    row = gate_up_ptr + t * stride_gt
    g = tl.load(row + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(row + N + offs, mask=ok, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    tl.store(out_ptr + t * stride_ot + offs, (s * u).to(dtype), mask=ok)


def silu_and_mul_launch(gate_up: torch.Tensor, out: torch.Tensor) -> Launch:
    """gate_up [T, 2I] (rows contiguous), out [T, I]. Arguments are already validated."""
    num_tokens, width = gate_up.shape
    constants = launch_constants(width // 2)
    grid = (num_tokens, -(-constants["N"] // constants["BLOCK"]))
    return Launch(_silu_and_mul_kernel, grid, (out, gate_up, gate_up.stride(0), out.stride(0)),
                  dict(constants, num_warps=4))


def launch_constants(n: int) -> dict:
    """The kernel's constexpr arguments (shared with kernels.compile_report)."""
    return dict(N=n, BLOCK=min(BLOCK, next_power_of_2(n)))
