"""Weight-only int8, one scale per output channel (symmetric).

    scale[n] = max_k |W[n, k]| / 127,   Wq[n, k] = round(W[n, k] / scale[n])  in [-127, 127]
    y = x @ W^T ~= (x @ Wq^T) * scale

With float32 activations on the CPU, a decode-sized product (up to `KERNEL_ROWS` rows) runs in kvserve's C
kernel (kernels/cpu/decode_step.c, `use_cpu_kernel`: float32 products and sums, so it is the dequantized
weight's float32 product, ~2x faster than the bf16 kernel below at one row and reading the weights at the
machine's memory bandwidth). Without it (no C compiler, another activation dtype), such a product runs in
PyTorch's own int8 weight-only kernel
(`torch.ops.aten._weight_int8pack_mm`, the one torchao's int8 weight-only layout calls), which reads one byte
per weight instead of four. It runs in bfloat16 (`CPU_KERNEL_DTYPE`): on an AVX2 machine its fp32 path is
scalar and ~3x slower than the fp32 GEMM it replaces, its bf16 path ~1.6x faster (120 SmolLM2 projections,
one row, one thread, cache-cold: `scripts/bench_quant_linear.py`, docs/benchmarks.md). The activations are
rounded to bf16 on the way in (fp32 accumulation inside), and the scales are rounded to bf16 before the
codes are chosen, so the kernel and the dequantized weight agree exactly. The kernel is built for few rows:
at prefill sizes it is far slower than MKL's GEMM, so larger batches dequantize the weight (N x K
multiply-adds) and run the ordinary GEMM. Elsewhere
the same arithmetic runs as a plain matmul on the weights cast to the activation dtype (correct, no faster
than the unquantized model: a GPU int8 kernel is not written yet).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.layers import linear

KERNEL_ROWS = 32  # up to this many rows the bf16 weight-only kernel; beyond, dequantize + GEMM
# (SmolLM2's projections, thread CPU ms for 20 of them: 16 rows kernel 19.7 vs fp32 GEMM 25.0; 32 rows kernel
# 37.1 vs dequantize + GEMM 41.0 vs fp32 29.1; 64 rows 70.4 vs 53.7: scripts/bench_quant_linear.py)
CPU_KERNEL_DTYPE = torch.bfloat16  # the activation and scale dtype of the CPU kernels (see above)


def kernel_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the quantized kernels compute in: bf16 on the CPU, the model's dtype elsewhere."""
    return CPU_KERNEL_DTYPE if weight.device.type == "cpu" else weight.dtype


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype = torch.float32,
                  qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K] in [-qmax, qmax], fp32 scales [N]) with weight ~= q * scale[:, None]; the scales are first
    rounded to `scale_dtype` (the dtype they are stored in), so the codes are the best ones for the stored scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1).clamp(min=1e-8) / qmax).to(scale_dtype).float()
    q = torch.round(w / scale[:, None]).clamp_(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + bias for x [M, K] (any 2-D layout)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        dtype = kernel_dtype(weight)
        q, scale = quantize_int8(weight, dtype)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(dtype))  # the kernel wants the activation dtype
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.cpu_kernel = None  # kernels.cpu.DecodeStepKernel once `use_cpu_kernel` gave it one
        self.scale_f32: torch.Tensor | None = None

    def use_cpu_kernel(self, kernel) -> None:
        """Compute float32 products of up to KERNEL_ROWS rows in kvserve's C kernel (`kernel.int8_linear`):
        x times the dequantized weight in float32, the same product the larger batches' GEMM computes."""
        self.cpu_kernel, self.scale_f32 = kernel, self.scale.float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_kernel is not None and x.dtype == torch.float32 and x.shape[0] <= KERNEL_ROWS \
                and x.device.type == "cpu":
            if x.stride(-1) != 1:
                x = x.contiguous()
            bias = None if self.bias is None else self.bias.detach()
            return self.cpu_kernel.int8_linear(x, self.qweight, self.scale_f32, bias)
        if x.device.type == "cpu" and x.shape[0] <= KERNEL_ROWS:
            xk = x.to(self.scale.dtype).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(xk, self.qweight, self.scale).to(x.dtype)
        elif x.device.type == "cpu":
            y = linear(x, self.qweight.to(x.dtype).mul_(self.scale.to(x.dtype)[:, None]))
        else:
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias
