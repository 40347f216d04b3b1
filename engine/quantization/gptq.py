"""GPTQ's packed int4 checkpoints (AutoGPTQ, GPTQModel, optimum; vLLM's "gptq") as `int4.py`'s format.

A GPTQ linear [out N, in K] with group size g (-1: one group spanning K) is stored as

    qweight int32 [K / 8, N]      eight 4-bit codes per int32 along the INPUTS: nibble i (bits 4i..4i+3) of
                                  row r holding input 8r + i, in natural order
    qzeros  int32 [K / g, N / 8]  the zero points along the outputs: nibble i of column c holds output 8c + i
    scales  fp16  [K / g, N]
    g_idx   int32 [K]             optional: the group of each input (k // g unless act-order reordered them)
    w[n, k] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]

The zero points: AutoGPTQ's original ("v1", checkpoint_format "gptq") packing subtracts one before storing,
so z = stored + 1. A zero point of 0 has no faithful v1 form (it is stored as -1): a nibble of 15 reads back as
16, as AutoGPTQ's own dequantization reads it, and `from_zero_points` takes that exactly (zero = -8 s); other
readers differ on such groups (GPTQModel's v1 -> v2 conversion adds 1 to the whole packed word, carrying into
the next nibble). GPTQModel's "gptq_v2" stores z itself. Symmetric checkpoints (sym: true) store z = 8 like any
other, so the layout does not depend on sym.
Mapped with `prepacked.from_zero_points`: codes = q transposed, scale = s, zero = (8 - z) s, exact in fp32.
Refused (ValueError naming quantization): act-order with a g_idx other than k // g (reordered inputs).
"""

from __future__ import annotations

import torch

from .prepacked import Int4Codes, check_trivial_g_idx, from_zero_points, misfit, source_group, unpack_nibbles

TENSORS = ("qweight", "qzeros", "scales", "g_idx")


def int4_from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int | None,
                   g_idx: torch.Tensor | None = None, zero_offset: int = 1) -> Int4Codes:
    """GPTQ tensors -> (codes int32 [N, K], scales fp32 [N, K / g], zeros fp32 [N, K / g]) for
    `Int4Linear.from_codes`; `zero_offset` 1 for v1 checkpoints (zero points stored minus one), 0 for v2."""
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    g = source_group(k, group_size)
    if k % g or scales.shape != (k // g, n) or qzeros.shape != (k // g, n // 8) or \
            (g_idx is not None and g_idx.shape != (k,)):
        raise misfit("GPTQ", group_size, qweight=qweight, qzeros=qzeros, scales=scales,
                     **({} if g_idx is None else {"g_idx": g_idx}))
    check_trivial_g_idx("GPTQ", g_idx, k, g)
    z = unpack_nibbles(qzeros, dim=1) + zero_offset
    return from_zero_points(unpack_nibbles(qweight, dim=0).t(), scales.t(), z.t())


def unpack_module(read, fmt) -> Int4Codes:
    return int4_from_gptq(read("qweight"), read("qzeros"), read("scales"), fmt.group_size,
                          read("g_idx", required=False), fmt.zero_offset)
