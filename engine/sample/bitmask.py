"""Structured output on the device: mask the logits of grammar rows to the tokens their grammar allows.

A bitmask row is ceil(vocab / 32) int32 words, bit t (word t // 32, bit t % 32) set when token t is allowed:
xgrammar's layout. A step's bitmask has one row per sampling row; rows without a grammar are all ones, so
masking leaves them exactly as they were. The masking itself is xgrammar's kernel (C++ on the CPU, Triton
or CUDA on a GPU: about 4x faster than the torch version here on the CPU); xgrammar is present whenever a
bitmask is, since the engine compiled the grammar with it. `apply_token_bitmask_reference` is the plain
torch version the tests compare it against.
"""

from __future__ import annotations

import torch


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Set the disallowed tokens of `logits` [R, V] to -inf by `bitmask` [R, W]: in place when `logits` is
    contiguous, else in a contiguous copy (xgrammar's CPU kernel reads rows as contiguous: a one-row matmul's
    output can have a stride of 2); returns the masked tensor."""
    import xgrammar as xgr

    logits = logits.contiguous()
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[1])
    return logits


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[G, W] int32 words -> [G, vocab_size] bool."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # arithmetic shift of negative words: the & 1 keeps one bit
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """What `apply_token_bitmask` does, in plain torch (a new tensor)."""
    return logits.masked_fill(~allowed_tokens(bitmask, logits.shape[1]), float("-inf"))
