"""Weight-only int8 with one scale per group of 32 input columns (GGUF's Q8_0), multiplied by dequantizing.

No PyTorch kernel takes grouped int8 weights: `_weight_int8pack_mm` has one scale per output channel, and
folding 32-column groups into one channel scale would requantize (lose the file's exact values). So the codes
and scales stay in memory (1.125 bytes per weight instead of 4) and each call expands them to the activation
dtype and runs the ordinary GEMM: the memory saving without a speed gain (measured in docs/quantization.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..models.layers import linear


class GroupedInt8Linear(nn.Module):
    """y = x @ (codes * scales per group)^T + bias for x [M, K]."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device, group_size: int = 32):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group_size, self.dtype = group_size, dtype
        self.register_buffer("qweight", codes.to(device=device, dtype=torch.int8).contiguous())
        self.register_buffer("scales", scales.to(device=device, dtype=torch.float32).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        n, k, g = self.out_features, self.in_features, self.group_size
        w = self.qweight.view(n, k // g, g).float().mul_(self.scales[..., None])
        return w.view(n, k).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.dequantized(x.dtype))
        return y if self.bias is None else y + self.bias
