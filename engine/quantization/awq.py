"""AWQ's packed int4 checkpoints ("gemm" version, AutoAWQ / vLLM) as the grouped int4 format of `int4.py`.

An AWQ linear [out N, in K] with group size g is stored as three tensors:

    qweight int32 [K, N / 8]      eight 4-bit codes per int32 along the outputs, nibble i (bits 4i..4i+3) of
                                  column j holding output 8j + ORDER[i], ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
    qzeros  int32 [K / g, N / 8]  the zero points, packed the same way
    scales  fp16  [K / g, N]
    w[n, k] = (q[k, n] - z[k / g, n]) * s[k / g, n]

and `int4.py`'s format is w = (q - 8) * scale + zero per output channel and group, so the mapping is

    codes = q (transposed to [N, K]),  scale = s,  zero = (8 - z) * s

exact in fp32: (q - 8) s and (8 - z) s are small integers times an fp16 value, and their sum rounds the exact
(q - z) s, itself representable. Not wired into the loader yet (see docs/quantization.md): this is the
mapping and its test, the piece a loader for `quantization_config.quant_method == "awq"` needs.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # output channel (within 8) held by nibble i
AWQ_UNORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # nibble holding output channel c (within 8)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N / 8] -> int32 [R, N] of 0..15, outputs in their natural order."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nibbles = (packed[..., None] >> shifts) & 15  # [R, N / 8, 8]: nibble i
    return nibbles[..., list(AWQ_UNORDER)].reshape(packed.shape[0], -1)


def int4_from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ tensors -> (codes int32 [N, K], scales fp32 [N, K / g], zeros fp32 [N, K / g]) for
    `Int4Linear.from_codes(..., group_size=group_size)`."""
    k = qweight.shape[0]
    if k % group_size or qzeros.shape[0] != k // group_size or scales.shape != (k // group_size, qweight.shape[1] * 8):
        raise ValueError(f"quantization: AWQ tensors do not fit together: qweight {tuple(qweight.shape)}, qzeros "
                         f"{tuple(qzeros.shape)}, scales {tuple(scales.shape)}, group_size {group_size}")
    codes = unpack_awq(qweight).t().contiguous()
    s = scales.float().t().contiguous()
    z = unpack_awq(qzeros).t().float()
    return codes, s, (8.0 - z) * s
