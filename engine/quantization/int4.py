"""Weight-only int4, grouped and asymmetric (the "tinygemm" format PyTorch's int4 kernels use).

For each output channel n and group g of `group_size` consecutive input columns:

    scale = (max - min) / 15,   zero = min + 8 * scale,   q = round((W - min) / scale)  in [0, 15]
    W ~= (q - 8) * scale + zero

On the CPU, `torch.ops.aten._convert_weight_to_int4pack_for_cpu` packs q (two codes per byte, in the layout
its kernel reads) and `torch.ops.aten._weight_int4pack_mm_for_cpu` multiplies (the pair torchao's
`Int4CPULayout` calls) up to `KERNEL_ROWS` rows, in bf16 as int8.py explains (with fp32 activations the
kernel is ~20x slower on AVX2; scales and zeros are rounded to bf16 before the codes are chosen); larger (prefill) batches unpack and dequantize the weight
and run the ordinary GEMM, because the kernel is ~40x slower than MKL there (see int8.py). The packed layout
is blocks of 32 output channels: byte [b, k, j] holds channel 32b + j in its low nibble and 32b + 16 + j in its
high nibble (read off the op's output; `test_int4_cpu_packing_layout` pins it).

Off the CPU the codes are two a byte along K (qweight uint8 [N, K / 2], column 2j in byte j's high nibble) and
(scale, zero) pairs sit per channel and group ([N, K / g, 2], the layer's dtype). On CUDA, batches of up to
`GPU_KERNEL_ROWS` rows (decode) run the Triton int4 GEMM (`kernels.int4_mm`), which reads the packed codes and
dequantizes them in registers: a quarter of bf16's weight bytes. Larger (prefill) batches, and devices without
the kernel, dequantize the whole weight into the activation dtype and run the dense GEMM (cuBLAS), which is
compute-bound there anyway.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels

from ..models.layers import linear
from .int8 import kernel_dtype

KERNEL_ROWS = 64  # up to this many rows the bf16 kernel: unpacking the codes makes dequantize + GEMM dearer
# than int8's (20 SmolLM2 projections, thread CPU ms: 32 rows kernel 39.7 vs dequantize + GEMM 81.4; 64 rows
# 66.4 vs 82.3; 256 rows 243 vs 157: scripts/bench_quant_linear.py)
FP32_KERNEL_ROWS = 1  # pre-quantized layers keep exact fp32 scales (from_codes), and the kernel's fp32 path is
# slow: ~4x the fp32 GEMM at one row, ~40x at 32 rows; beyond one row their dequantize + GEMM is cheaper

GPU_KERNEL_ROWS = 64  # up to this many rows the Triton kernel on CUDA (its largest row tile); above, a prefill
# batch reuses each dequantized weight across enough rows for dequantize + cuBLAS to win (kernels.bench's int4
# rows measure both paths)

PACK_BLOCK_N = 32  # output channels per block of the CPU kernel's packed layout


def quantize_int4(weight: torch.Tensor, group_size: int,
                  scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes int32 [N, K] in 0..15, scales [N, K / g], zeros [N, K / g]), fp32; scale and zero are first
    rounded to `scale_dtype` (the dtype they are stored in) and the codes chosen for the rounded values."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"quantization_group_size: {group_size} does not divide the input size {k}")
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo).clamp(min=1e-8) / 15.0).to(scale_dtype).float()
    zero = (lo + 8.0 * scale).to(scale_dtype).float()
    lo = zero - 8.0 * scale  # the minimum the stored (scale, zero) represent
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.int32)
    return q.reshape(n, k), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = q.shape
    g = q.reshape(n, k // group_size, group_size).float()
    return ((g - 8.0) * scale[..., None] + zero[..., None]).reshape(n, k)


class Int4Linear(nn.Module):
    """y = x @ dequant(q)^T + bias for x [M, K]."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, group_size: int, *,
                 codes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__()
        if codes is None:  # quantize here, choosing codes for scales rounded to the kernel's dtype
            self.dtype = kernel_dtype(weight)
            q, scale, zero = quantize_int4(weight, group_size, self.dtype)
            device = weight.device
        else:  # pre-quantized: the source's exact scales, kept in `dtype` (see from_codes)
            (q, scale, zero), self.dtype = codes, dtype
        self.out_features, self.in_features = q.shape
        self.group_size = group_size
        if device.type == "cpu":
            if self.out_features % PACK_BLOCK_N:
                raise ValueError(f"quantization: int4 on the CPU needs output sizes that are multiples of "
                                 f"{PACK_BLOCK_N}; a projection has {self.out_features}")
            self.packed = True
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.cpu(), 1))
            # [K / g, N, 2]: the kernel's layout for (scale, zero) pairs, in the kernel's activation dtype
            self.register_buffer("scales_and_zeros",
                                 torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(self.dtype))
        else:
            self.packed = False
            q = q.to(device)
            self.register_buffer("qweight", ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8))  # 2 codes a byte
            self.register_buffer("scales_and_zeros", torch.stack([scale, zero], dim=-1).to(device, self.dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int,
                   bias: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> "Int4Linear":
        """A layer from codes [N, K] (0..15), scales and zeros [N, K / group_size] already in this format
        (a pre-quantized checkpoint, e.g. GGUF Q4 blocks: `gguf_blocks.py`), with no requantization. The
        scales stay in `dtype` (the model's: fp32 on the CPU), not the bf16 that load-time quantization uses
        for the CPU kernel's speed: bf16 would round the file's fp16 scales (8 vs 11 significant bits), and
        the weights would no longer be the checkpoint's. The price: the CPU kernel then runs in fp32."""
        return cls(None, bias, group_size, codes=(codes, scales.float(), zeros.float()), dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed and x.shape[0] <= (KERNEL_ROWS if self.dtype == torch.bfloat16 else FP32_KERNEL_ROWS):
            xk = x.to(self.dtype).contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xk, self.qweight, self.group_size,
                                                           self.scales_and_zeros).to(x.dtype)
        elif self.packed:
            y = linear(x, self._dequantized_cpu(x.dtype))
        elif x.is_cuda and x.numel() <= GPU_KERNEL_ROWS * self.in_features:
            x2 = x.reshape(-1, self.in_features).contiguous()
            y = kernels.int4_mm(x2, self.qweight, self.scales_and_zeros, self.group_size)
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self._dequantized(x.dtype))
        return y if self.bias is None else y + self.bias

    def codes_cpu(self) -> torch.Tensor:
        """The 0..15 codes [N, K] back out of the CPU kernel's packed layout."""
        n, k = self.out_features, self.in_features
        b = self.qweight.view(n // PACK_BLOCK_N, k, PACK_BLOCK_N // 2)
        return torch.cat([b & 15, b >> 4], dim=2).transpose(1, 2).reshape(n, k)

    def _dequantized_cpu(self, dtype: torch.dtype) -> torch.Tensor:
        sz = self.scales_and_zeros.transpose(0, 1)  # [N, K / g, 2]
        g = self.codes_cpu().view(self.out_features, -1, self.group_size).to(dtype).sub_(8.0)
        sz = sz.to(dtype)
        return g.mul_(sz[..., 0:1]).add_(sz[..., 1:2]).view(self.out_features, self.in_features)

    def _dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        codes = torch.stack([self.qweight >> 4, self.qweight & 15], dim=-1).reshape(self.out_features, -1)
        sz = self.scales_and_zeros
        return dequantize_int4(codes.to(torch.int32), sz[..., 0].float(), sz[..., 1].float(), self.group_size).to(dtype)
