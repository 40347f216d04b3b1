"""Weight-only int8, one scale per output channel (symmetric).

    scale[n] = max_k |W[n, k]| / 127,   Wq[n, k] = round(W[n, k] / scale[n])  in [-127, 127]
    y = x @ W^T ~= (x @ Wq^T) * scale

On the CPU a decode-sized product (up to `KERNEL_ROWS` rows) runs in PyTorch's own int8 weight-only kernel
(`torch.ops.aten._weight_int8pack_mm`, the one torchao's int8 weight-only layout calls), which reads one byte
per weight instead of four. That kernel is built for few rows: at prefill sizes it is ~40x slower than MKL's
GEMM (512 rows of SmolLM2's gate/up projection: 6.4 s vs 0.16 s on the shared 2-core machine), so larger
batches dequantize the weight (N x K multiply-adds, a few ms) and run the ordinary GEMM. Elsewhere
the same arithmetic runs as a plain matmul on the weights cast to the activation dtype (correct, no faster
than the unquantized model: a GPU int8 kernel is not written yet).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.layers import linear

KERNEL_ROWS = 2  # up to this many rows the weight-only kernel; beyond, dequantize + GEMM
# (its cost grows ~linearly with the rows: 1 row 50 ms, 4 rows 121, 12 rows 338 vs dequantize + GEMM 108 at
# 4 rows, on the overloaded shared machine: scripts/bench_quant_linear.py, docs/benchmarks.md)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K], fp32 scales [N]) with weight ~= q * scale[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + bias for x [M, K] (any 2-D layout)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        q, scale = quantize_int8(weight)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(weight.dtype))  # the kernel wants the activation dtype
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.shape[0] <= KERNEL_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.qweight, self.scale)
        elif x.device.type == "cpu":
            y = linear(x, self.qweight.to(x.dtype).mul_(self.scale[:, None]))
        else:
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias
