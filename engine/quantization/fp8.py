"""fp8 (e4m3) weights and activations for Hopper/Ada GPUs, through `torch._scaled_mm`.

Weights: one scale per output channel, quantized once at load. Activations: one scale per token (row),
quantized at every call. Then

    y[m, n] = sum_k xq[m, k] * wq[n, k] * x_scale[m] * w_scale[n]

which `torch._scaled_mm(xq, wq^T, scale_a=x_scale[M, 1], scale_b=w_scale[1, N])` computes on the fp8 tensor
cores with fp32 accumulation (row-wise scaling). The engine allows it only on CUDA devices of compute
capability 8.9 or newer (`check_fp8_device`); PyTorch 2.13's CPU build also implements `_scaled_mm`, which is
what the CPU tests run to check this module's arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn as nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def check_fp8_device(device: torch.device) -> None:
    """ValueError naming `quantization` unless `device` is a CUDA GPU with fp8 tensor cores (sm_89+)."""
    if device.type != "cuda":
        raise ValueError(f"quantization: fp8 needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper); the device "
                         f"is {device}; on the CPU use int8 or int4")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(f"quantization: fp8 needs compute capability 8.9+ (Ada, Hopper); {device} is sm_{major}{minor}; "
                         "use int8 or int4")


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 [R, C], fp32 scales [R, 1]): each row scaled so its largest magnitude maps to 448."""
    x32 = x.float()
    scale = x32.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (x32 / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_fp8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


class Fp8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        q, scale = quantize_fp8_rows(weight.detach())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("qweight_t", q.t())  # [K, N] column-major: the layout _scaled_mm wants for mat2
        self.register_buffer("scale", scale.t().contiguous())  # [1, N]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, x_scale = quantize_fp8_rows(x)
        y = torch._scaled_mm(xq, self.qweight_t, scale_a=x_scale, scale_b=self.scale, out_dtype=x.dtype)
        return y if self.bias is None else y + self.bias
