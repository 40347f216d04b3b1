"""8-bit keys and values with one scale per (token, KV head): the torch arithmetic of the quantized cache.

For one token's key (or value) in one KV head, a vector x of head_dim elements:

    scale = max|x| / qmax          (qmax: 127 for int8, 448 for fp8 e4m3, 57344 for fp8 e5m2)
    q     = round(x / scale)       int8 (clamped to +-127), or x / scale cast to fp8 (round to nearest)
    x    ~= q * scale

Why per token and head: a scale per tensor (or per layer) must be fixed before the data is seen, either
calibrated offline or guessed, and one outlier token or head (attention sinks and a few massive-activation
channels are common in Llama-family keys) then flattens the resolution of every other one. A scale computed
from each token's own vector needs no calibration, cannot overflow, and is written once with the token: it
never changes afterwards, so blocks shared through the prefix cache and blocks recomputed after preemption
hold exactly the same bytes. It costs 4 bytes per head per token (6% of a 64-element int8 head). A per-channel
scale would be better for keys' outlier channels but needs statistics over many tokens, i.e. calibration.

The cache stores q in the block layout of the unquantized cache ([blocks, block_size, KVH, D], storage dtype)
plus a scale tensor [blocks, block_size, KVH] (fp32) beside it, for K and for V. The arithmetic itself is
`kernels.reference.quantize_kv_ref` / `dequantize_kv_ref`, the oracle the Triton store and attention kernels
are tested against (bit for bit for the codes): the CPU path and the GPU kernels write the same bytes.
"""

from __future__ import annotations

import torch

from kernels.reference import dequantize_kv_ref, quantize_kv_ref

from .config import SCALE_DTYPE, KVCacheDtype


def quantize_kv(x: torch.Tensor, spec: KVCacheDtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (codes [..., D] in spec.storage, scales [...] fp32)."""
    return quantize_kv_ref(x, spec.storage)


def dequantize_kv(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes [..., D], scales [...] -> values [..., D] in `dtype` (computed in fp32, rounded once)."""
    return dequantize_kv_ref(q, scale, dtype)


def fake_quantize_kv(x: torch.Tensor, spec: KVCacheDtype) -> torch.Tensor:
    """What the cache gives back for x: used where attention reads this step's own K/V directly, so a
    sequence sees the same keys whether they come from the cache or not (prefix hits, chunks, recompute)."""
    q, s = quantize_kv(x, spec)
    return dequantize_kv(q, s, x.dtype)


def allocate_kv_cache(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, spec: KVCacheDtype,
                      model_dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """One layer's cache: (key, value) unquantized, or (key codes, value codes, key scales, value scales)."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    if not spec.quantized:
        return (torch.zeros(shape, dtype=model_dtype, device=device),
                torch.zeros(shape, dtype=model_dtype, device=device))
    return (torch.zeros(shape, dtype=spec.storage, device=device), torch.zeros(shape, dtype=spec.storage, device=device),
            torch.ones(shape[:3], dtype=SCALE_DTYPE, device=device), torch.ones(shape[:3], dtype=SCALE_DTYPE, device=device))
