"""GGUF's 4-bit blocks (Q4_0, Q4_1) as the grouped int4 format of `int4.py`, without a detour through fp32.

A GGUF Q4 tensor [N, K] is stored row by row in blocks of 32 consecutive input columns:

    Q4_0 (18 bytes): d fp16, 16 bytes of codes         w = d * (q - 8)
    Q4_1 (20 bytes): d fp16, m fp16, 16 bytes of codes  w = d * q + m
    codes: byte j holds column j in its low nibble and column 16 + j in its high nibble, q in 0..15

and `int4.py`'s (torchao "tinygemm") format is, per output channel and group of `group_size` columns,
w = (q - 8) * scale + zero. So with group_size = 32 the blocks map onto it code for code:

    Q4_0: scale = d, zero = 0          (q - 8) * d + 0      = d * (q - 8)  exactly
    Q4_1: scale = d, zero = m + 8 d    (q - 8) * d + m + 8d = d * q + m   (real arithmetic)

In fp32, (q - 8) * d and d * q are exact (4-bit times 11-bit significands), so each side is one rounding of
the same real number, bit for bit what gguf's dequantize computes, whenever zero = m + 8d is itself exact
in fp32: always unless d and m differ in magnitude by more than 2^13 (`inexact_zeros` counts such groups; a
difference of at most one fp32 ulp of the zero where it happens). Tested against `gguf.quants.dequantize`.

Pure torch: the bytes come from whoever read the file (`gguf_int4.py` reads it with the `gguf` package).
"""

from __future__ import annotations

import torch

BLOCK = 32
Q4_0, Q4_1, Q8_0 = 2, 3, 8  # ggml's type ids (gguf.GGMLQuantizationType)
BLOCK_BYTES = {Q4_0: 18, Q4_1: 20}
Q8_0_BYTES = 34  # d fp16, 32 int8 codes: w = d * q (exact in fp32)


def int4_from_q4_blocks(raw: torch.Tensor, qtype: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """raw uint8 [N, K / 32 * block bytes] -> (codes int32 [N, K] in 0..15, scales fp32 [N, K / 32],
    zeros fp32 [N, K / 32]) in `int4.py`'s format with group_size 32."""
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"quantization: GGUF type {qtype} is not Q4_0 ({Q4_0}) or Q4_1 ({Q4_1})")
    size = BLOCK_BYTES[qtype]
    n = raw.shape[0]
    if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] % size:
        raise ValueError(f"quantization: expected uint8 rows of whole {size}-byte blocks, got {raw.dtype} "
                         f"{tuple(raw.shape)}")
    blocks = raw.reshape(n, -1, size)
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
    qs = blocks[..., size - 16:]
    codes = torch.cat([qs & 15, qs >> 4], dim=-1).to(torch.int32).reshape(n, -1)
    if qtype == Q4_0:
        return codes, d, torch.zeros_like(d)
    m = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float()
    return codes, d, m + 8.0 * d


def inexact_zeros(raw: torch.Tensor, qtype: int) -> int:
    """Groups whose fp32 zero m + 8d is rounded (there the dequantized weights may differ by one ulp)."""
    if qtype != Q4_1:
        return 0
    blocks = raw.reshape(raw.shape[0], -1, BLOCK_BYTES[Q4_1])
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).double()
    m = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).double()
    return int(((m + 8.0 * d).float().double() != m + 8.0 * d).sum())


def int8_from_q8_0_blocks(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """raw uint8 [N, K / 32 * 34] -> (codes int8 [N, K], scales fp32 [N, K / 32]): w = codes * scale per group
    of 32, bit for bit gguf's dequantization (an 8-bit times 11-bit product is exact in fp32)."""
    if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] % Q8_0_BYTES:
        raise ValueError(f"quantization: expected uint8 rows of whole {Q8_0_BYTES}-byte Q8_0 blocks, got {raw.dtype} "
                         f"{tuple(raw.shape)}")
    blocks = raw.reshape(raw.shape[0], -1, Q8_0_BYTES)
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
    return blocks[..., 2:].contiguous().view(torch.int8).reshape(raw.shape[0], -1), d
