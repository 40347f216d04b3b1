"""compressed-tensors "pack-quantized" int4 checkpoints (llm-compressor, vLLM's "compressed-tensors") as
`int4.py`'s format.

A projection [out N, in K] with group size g (strategy "group"; "channel": one group spanning K) is stored as

    weight_packed      int32 [N, K / 8]   signed 4-bit values q in -8..7, stored as q + 8, eight a word along
                                          the inputs: nibble i (bits 4i..4i+3) of word j holds input 8j + i
    weight_scale       fp16/bf16 [N, K / g]
    weight_shape       int [2]            (N, K): the unpadded shape
    weight_zero_point  (asymmetric only)  signed zero points zp, packed like the codes but along the OUTPUTS:
                                          int32 [N / 8, K / g], nibble i of row r holding output 8r + i, each
                                          stored as zp + 8 (older writers: unpacked ints [N, K / g])
    weight_g_idx       int [K]            optional (actorder "group"): the group of each input
    w = (q - zp) * s = (u - (zp + 8)) * s,   u the stored nibble

so in `prepacked.from_zero_points`' terms codes = u and z = zp + 8 (8 when symmetric: zero = 0), exact in fp32.
Which layers are quantized, with what scheme, is checked from the config (`checkpoint_formats`).
"""

from __future__ import annotations

import torch

from .prepacked import Int4Codes, check_trivial_g_idx, from_zero_points, misfit, source_group, unpack_nibbles

TENSORS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")


def int4_from_compressed(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_shape: torch.Tensor,
                         group_size: int | None, weight_zero_point: torch.Tensor | None = None,
                         weight_g_idx: torch.Tensor | None = None) -> Int4Codes:
    """compressed-tensors tensors -> (codes int32 [N, K], scales fp32 [N, K / g], zeros fp32 [N, K / g])
    for `Int4Linear.from_codes`; no `weight_zero_point`: symmetric."""
    zero_point, g_idx = weight_zero_point, weight_g_idx
    n, k = (int(v) for v in weight_shape.tolist())
    g = source_group(k, group_size)
    tensors = {"weight_packed": weight_packed, "weight_scale": weight_scale, "weight_shape": weight_shape,
               **({} if zero_point is None else {"weight_zero_point": zero_point})}
    if k % 8 or k % g or weight_packed.shape != (n, k // 8) or weight_scale.shape != (n, k // g) or \
            (zero_point is not None and zero_point.shape not in ((n // 8, k // g), (n, k // g))) or \
            (g_idx is not None and g_idx.shape != (k,)):
        raise misfit("compressed-tensors", group_size, **tensors)
    check_trivial_g_idx("compressed-tensors", g_idx, k, g)
    if zero_point is None:
        z = torch.full(weight_scale.shape, 8, dtype=torch.int32)
    elif zero_point.shape[0] == n:  # unpacked signed zero points
        z = zero_point.to(torch.int32) + 8
    else:
        z = unpack_nibbles(zero_point, dim=0)
    return from_zero_points(unpack_nibbles(weight_packed, dim=1), weight_scale, z)


def unpack_module(read, fmt) -> Int4Codes:
    return int4_from_compressed(read("weight_packed"), read("weight_scale"), read("weight_shape"), fmt.group_size,
                                read("weight_zero_point", required=False), read("weight_g_idx", required=False))
