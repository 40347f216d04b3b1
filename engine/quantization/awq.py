"""AWQ's packed int4 checkpoints ("gemm" version, AutoAWQ / vLLM) as the grouped int4 format of `int4.py`.

An AWQ linear [out N, in K] with group size g is stored as three tensors:

    qweight int32 [K, N / 8]      eight 4-bit codes per int32 along the outputs, nibble i (bits 4i..4i+3) of
                                  column j holding output 8j + ORDER[i], ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
    qzeros  int32 [K / g, N / 8]  the zero points, packed the same way
    scales  fp16  [K / g, N]
    w[n, k] = (q[k, n] - z[k / g, n]) * s[k / g, n]

mapped with `prepacked.from_zero_points` (codes = q transposed, scale = s, zero = (8 - z) s, exact in fp32).
Loading, config checks and the fused stacking are shared with GPTQ and compressed-tensors (`prepacked.py`).
"""

from __future__ import annotations

import torch

from .prepacked import Int4Codes, from_zero_points, misfit, source_group, unpack_nibbles

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # output channel (within 8) held by nibble i
AWQ_UNORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # nibble holding output channel c (within 8)
TENSORS = ("qweight", "qzeros", "scales")


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N / 8] -> int32 [R, N] of 0..15, outputs in their natural order."""
    nibbles = unpack_nibbles(packed, dim=1).view(packed.shape[0], -1, 8)  # [R, N / 8, 8]: nibble i
    return nibbles[..., list(AWQ_UNORDER)].reshape(packed.shape[0], -1)


def int4_from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int | None
                  ) -> Int4Codes:
    """AWQ tensors -> (codes int32 [N, K], scales fp32 [N, K / g], zeros fp32 [N, K / g]) for
    `Int4Linear.from_codes`; `group_size` None: one group per output channel."""
    k, n = qweight.shape[0], qweight.shape[1] * 8
    g = source_group(k, group_size)
    if k % g or scales.shape != (k // g, n) or qzeros.shape != (k // g, n // 8):
        raise misfit("AWQ", group_size, qweight=qweight, qzeros=qzeros, scales=scales)
    return from_zero_points(unpack_awq(qweight).t(), scales.t(), unpack_awq(qzeros).t())


def unpack_module(read, fmt) -> Int4Codes:
    return int4_from_awq(read("qweight"), read("qzeros"), read("scales"), fmt.group_size)
