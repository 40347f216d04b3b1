"""Counter-based sampling noise: Exp(1) noise that is a pure function of (seed, output position, token id).

The sampler draws a token with the exponential race (argmax of p_i / E_i, E_i ~ Exp(1), equivalent to
drawing from p). Here E_i is not taken from a stateful generator but computed from a hash of the sequence's
seed, the output position being sampled and the token id, so a seeded sequence draws the same noise
whatever else is in the batch, whether or not it was preempted and recomputed, whether its token was
sampled one step late (asynchronous scheduling), and in whichever worker process it runs: there is no
generator state to carry. The same idea as counter-based generators such as Philox (torch's CUDA
generator), written with plain tensor ops so that every row of a batch gets its own key in one pass.

The hash works on 32-bit values held in int64 tensors. Every multiplication is by an odd constant below
2**31 of a value below 2**32, so no product overflows int64 (signed overflow is undefined behaviour in the
C++ that runs these ops), and masking with 2**32 - 1 gives the low 32 bits as unsigned arithmetic would.
Xor-shifts and odd multiplications are bijections of the 32-bit values, so within one row every token gets
a distinct 32-bit value; tests/engine/test_sampler.py checks the draws against the distributions they
must follow.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFF_FFFF
_MUL1, _MUL2 = 0x7FEB_352D, 0x68E3_1DA5  # odd, below 2**31
_MIN_NOISE = 2.0 ** -26  # below every noise value but the one that rounds to 0
_TOKEN_MUL = 0x9E37_79B9  # the golden-ratio constant: spreads consecutive token ids over the 32-bit range


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two xor-shift-multiply rounds) of int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _M32
    return x ^ (x >> 16)


def row_keys(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from its 64-bit seed (int64, any sign) and the output position it samples."""
    lo = seeds & _M32
    hi = (seeds >> 32) & _M32  # arithmetic shift, then masked: the high word of the two's complement
    key = mix32(lo ^ 0x3C6E_F372)
    key = mix32(key ^ hi)
    return mix32(key ^ (positions & _M32))


def token_keys(vocab_size: int, device: torch.device) -> torch.Tensor:
    if vocab_size >= 2**31:
        raise ValueError(f"vocab_size: {vocab_size} is too large for 32-bit token keys")
    return (torch.arange(vocab_size, dtype=torch.int64, device=device) * _TOKEN_MUL) & _M32


def exponential_noise(keys: torch.Tensor, tok_keys: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise [rows, vocab] (float32) from row keys [rows] and token keys [vocab]."""
    x = mix32(keys[:, None] ^ tok_keys[None, :])
    # 24 bits: exactly representable in float32, so u is the same on every device; u in (0, 1)
    u = (x >> 8).to(torch.float32).add_(0.5).mul_(2.0 ** -24)
    # The top 24-bit value rounds to u = 1.0 (2**24 - 0.5 is not a float32), whose noise would be 0: a token
    # with probability 0 (masked by a grammar, top-k, top-p) would then score 0 / 0 = NaN and win the argmax.
    return u.log_().neg_().clamp_min_(_MIN_NOISE)
