"""int8 weights and int8 activations (W8A8) on the CPU, through PyTorch's dynamic int8 GEMM (fbgemm / oneDNN), or
kvserve's C kernel for the same arithmetic once the runner gives it one (`use_cpu_kernel`, below).

Weights: one scale per output channel, codes in [-63, 63] (7 bits, see below), packed once at load by
`torch.ops.quantized.linear_prepack`. Activations: quantized at every call, one scale per token (row),
symmetric, 127 levels a side:

    r[m] = max_k |x[m, k]|,   xq[m, k] = round(127 x[m, k] / r[m])  in [-127, 127]
    y[m, n] = r[m] / 127 * sw[n] * sum_k xq[m, k] wq[n, k]      (exact int32 sums, then fp32)

The kernel, `torch.ops.quantized.linear_dynamic`, chooses one affine scale and zero point for its whole
input from the input's min and max. So each row is first divided by its own max |x| (every value then lies
in [-1, 1]) and one extra row `pin_row` pins the input's range to [-1, 1 + 1/127]: the kernel then always
picks scale 1/127 and zero point 127, which is the per-token quantization above. Two things follow: one
token's large activations do not coarsen the others' codes, and a row's output does not depend on the other
rows of the step (batching leaves every sequence's result bit-identical; tested).

Why 7-bit weights: on AVX2 the kernel multiplies unsigned 8-bit activation codes by signed 8-bit weights and
adds each pair of products into a saturating 16-bit lane (255 x 127 x 2 = 64,770 > 32,767). With weights in
[-63, 63] the pair sum stays below 32,130 and nothing saturates. The alternatives measured worse on the
default model (perplexity vs fp32, LM head in fp32 for all three): 8-bit weights with 7-bit activations
(the kernel's own `reduce_range`) +10.3%, 8-bit both (saturating) +6.5%, this choice +2.8%.

The multiply-adds run on int8 lanes: on the 2-core AVX2 CI machine SmolLM2-135M's 120 projections at 32
rows took 89 ms of thread CPU against the fp32 GEMM's 215 and the bf16 weight-only int4 kernel's 272; at one
row 31 ms against 85 (fp32) and 22 (int4), the kernel's fixed cost (~40 us a call) showing
(`scripts/bench_quant_linear.py --rows 1,32`). This is what batched decode on the
CPU wants; the price is accuracy (docs/benchmarks.md). PyTorch marks its quantized-tensor API deprecated
(torchao is its successor, whose int8 x int8 CPU path goes through `torch._int_mm`, ~40x slower here);
kvserve pins torch 2.13, where it works. CPU only: on a GPU use fp8 (`check_w8a8_device`).

kvserve's C kernel (kernels/cpu/decode_step.c, `w8a8_linear`) computes the same codes and the same exact
integer sums with AVX2's u8 x s8 multiply-add (activation codes + 128, taken back out with each weight row's
code sum). SmolLM2's 120 projections at one row take 12.7 ms of one thread there against fbgemm's 24.2 (no
~40 us fixed cost per call); about level at 16 rows (60 vs 58); beyond, fbgemm's blocked GEMM is 1.2-1.4x faster
(`scripts/bench_quant_linear.py`). So with a C compiler the runner gives every W8A8 layer the kernel for
batches of up to C_KERNEL_ROWS rows, and the one-call decode step (engine/worker/cpu_decode.py) runs on it;
prefills stay on fbgemm. The kernel reads a plain copy of the codes (fbgemm's packing is private): w8a8 then
holds its codes twice, one more byte per weight, which the weight report and the KV budget count.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .int8 import quantize_int8

# The op's C++ entry point: the Python packet in front of it checks every call's arguments for tracing
# placeholders (~10 us a call here, ~1 ms of a 121-projection decode step).
LINEAR_DYNAMIC = getattr(torch.ops.quantized.linear_dynamic, "_op", torch.ops.quantized.linear_dynamic)
LEVELS = 127  # activation codes per side of zero once the range is pinned to [-1, 1 + 1/LEVELS]
WEIGHT_LEVELS = 63  # weight codes per side: 7 bits, so that AVX2's 16-bit pair sums cannot saturate
C_KERNEL_ROWS = 16  # up to this many rows the C kernel once given one (`use_cpu_kernel`), beyond fbgemm


def check_w8a8_device(device: torch.device) -> None:
    """ValueError naming `quantization` unless `device` is the CPU (where the dynamic int8 GEMM runs)."""
    if device.type != "cpu":
        raise ValueError(f"quantization: w8a8 runs on the CPU (PyTorch's dynamic int8 GEMM); the device is {device}; "
                         "on a GPU use fp8 (compute capability 8.9+), int8 or int4")


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K] in -127..127 as int32, per-row scales [M, 1]): the activation quantization of the module
    docstring, written out in torch so that tests can check the kernel path against it."""
    r = row_scales(x)
    return torch.round(x / r * LEVELS).to(torch.int32), r / LEVELS


def row_scales(x: torch.Tensor) -> torch.Tensor:
    """max |x| per row [M, 1], at least 1e-30 (an all-zero row's codes are then all zero)."""
    return x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-30)


class W8A8Linear(nn.Module):
    """y = dynamic_int8(x) @ (q * scale)^T + bias for x [M, K] on the CPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        check_w8a8_device(weight.device)
        q, scale = quantize_int8(weight, qmax=WEIGHT_LEVELS)
        self.out_features, self.in_features = q.shape
        with warnings.catch_warnings():  # the quantized-tensor API's deprecation notice (module docstring)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
        self.packed = torch.ops.quantized.linear_prepack(qw, None)  # codes and scales; not a tensor: `packed_bytes`
        self.pin_row = torch.zeros(1, self.in_features)  # the range-pinning row (module docstring): a constant
        self.pin_row[0, 0], self.pin_row[0, 1] = 1.0 + 1.0 / LEVELS, -1.0  # on the CPU, not a model weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        # kvserve's C kernel (`use_cpu_kernel`): the codes, float32 scales and code sums it reads
        self.cpu_kernel = None
        self.qweight = self.scale_f32 = self.wsum = None

    @property
    def packed_bytes(self) -> int:
        """The weight's bytes, which no parameter or buffer holds: one per weight plus an fp32 scale per output
        channel in fbgemm's packed weight, and as much again (plus an int32 code sum per channel) in the C
        kernel's plain copy once made (what `sizing.quantized_bytes` counts for w8a8)."""
        packed = self.out_features * self.in_features + self.out_features * 4
        return packed if self.qweight is None else 2 * packed + self.out_features * 4

    def codes(self) -> torch.Tensor:
        """The int8 weight codes [N, K] back out of the packed weight."""
        qw, _ = torch.ops.quantized.linear_unpack(self.packed)
        return qw.int_repr()

    def use_cpu_kernel(self, kernel) -> None:
        """Run batches of up to C_KERNEL_ROWS rows in kvserve's C kernel (`kernel.w8a8_linear`: the same
        activation quantization, the same exact int32 sums). It reads a plain copy of the codes made here
        (fbgemm's packed layout is private): one more byte per weight."""
        qw, _ = torch.ops.quantized.linear_unpack(self.packed)  # one unpack: the codes and their scales
        self.qweight = qw.int_repr().contiguous()
        self.scale_f32 = qw.q_per_channel_scales().float().contiguous()
        self.wsum = self.qweight.sum(dim=1, dtype=torch.int32)
        self.cpu_kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_kernel is not None and x.shape[0] <= C_KERNEL_ROWS:
            bias = None if self.bias is None else self.bias.detach()
            y = self.cpu_kernel.w8a8_linear(x.float() if x.stride(-1) == 1 else x.float().contiguous(),
                                            self.qweight, self.scale_f32, self.wsum, bias)
            return y.to(x.dtype)
        x32 = x.float()
        r = row_scales(x32)
        y = LINEAR_DYNAMIC(torch.cat((x32 / r, self.pin_row)), self.packed, False)  # False: no reduce_range
        y = y[:-1].mul_(r).to(x.dtype)
        return y if self.bias is None else y.add_(self.bias)
