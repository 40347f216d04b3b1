"""The per-step attention metadata: built once per step on the host, read by every layer."""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch

from .plans import AttentionPlan


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Describes one flattened batch of S sequences and T query tokens.

    `max_query_len` / `max_seq_len` are host-side ints so kernels never read device tensors to size their
    grids (a requirement for CUDA-graph capture). `plan` is backend-private precomputation (the torch
    backend's gather indices), built once per step rather than once per layer.
    """

    slot_mapping: torch.Tensor  # [T] int64
    block_tables: torch.Tensor  # [S, B] int32
    cu_seqlens_q: torch.Tensor  # [S+1] int32
    seq_lens: torch.Tensor  # [S] int32
    max_query_len: int
    max_seq_len: int
    num_decode_only: bool  # every sequence has exactly one query token
    plan: AttentionPlan | None = None
    # The KV-cache group's sliding window: a query at p reads keys p - window + 1 .. p only, and table entries
    # of blocks wholly before that may name released blocks. None = every key up to p.
    sliding_window: int | None = None
    # Host-side: whether some slot_mapping entry is -1 (skip the token: a CUDA-graph batch's padding). False
    # spares the torch backend a per-layer scan of the slots; True (the default) is always correct.
    skips_slots: bool = True


def build_attention_metadata(query_lens: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray,
                             slot_mapping: np.ndarray, device: torch.device,
                             plan: AttentionPlan | None = None, sliding_window: int | None = None) -> AttentionMetadata:
    cu = np.zeros(len(query_lens) + 1, dtype=np.int32)
    np.cumsum(query_lens, out=cu[1:])
    pin = device.type == "cuda"

    def to(arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(arr)
        return t.pin_memory().to(device, non_blocking=True) if pin else t

    return AttentionMetadata(
        slot_mapping=to(slot_mapping.astype(np.int64, copy=False)),
        block_tables=to(block_tables.astype(np.int32, copy=False)),
        cu_seqlens_q=to(cu),
        seq_lens=to(seq_lens.astype(np.int32, copy=False)),
        max_query_len=int(query_lens.max()) if len(query_lens) else 0,
        max_seq_len=int(seq_lens.max()) if len(seq_lens) else 0,
        num_decode_only=bool(len(query_lens)) and bool((query_lens == 1).all()),
        plan=plan,
        sliding_window=sliding_window,
        skips_slots=bool((slot_mapping < 0).any()),
    )
