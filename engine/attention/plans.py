"""Per-step attention plans: what a backend precomputes once per step on the host and every layer reads.

`AttentionMetadata.plan` holds one of these (or None): the torch backend's gather indices and masks (and
the CPU decode kernel's batch), or the Triton backend's fixed split-KV count (set by the CUDA-graph runner,
so a replay matches its capture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kernels.cpu import DecodeBatch


@dataclass(frozen=True, slots=True)
class PrefillSeq:
    q_start: int
    q_end: int
    kv_blocks: torch.Tensor | None  # [nblk] block ids holding the L keys; None when q covers the whole context
    kv_len: int  # keys used, counted from the first gathered block's first slot
    mask: torch.Tensor | None  # [q_len, L] additive: 0 = attend, -inf = in the future


@dataclass(frozen=True, slots=True)
class DecodeGroup:
    num_seqs: int  # Sg
    rows: torch.Tensor | None  # [Sg] query rows of these decoding sequences; None: every row, in batch order
    blocks: torch.Tensor  # [Sg * Bmax] block ids, row-major (0 where padded)
    mask: torch.Tensor  # [Sg, 1, 1, Bmax * block_size] additive: 0 = attend, -inf = padding


@dataclass(frozen=True, slots=True)
class TorchPlan:
    decodes: tuple[DecodeGroup, ...]
    prefills: tuple[PrefillSeq, ...]
    native: DecodeBatch | None = None  # every decoding sequence, for the CPU decode kernel (then no decodes)


@dataclass(frozen=True, slots=True)
class TritonPlan:
    num_splits: int | None  # split-KV count for decode batches; None lets the kernel choose


AttentionPlan = TorchPlan | TritonPlan
