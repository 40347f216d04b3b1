"""One step flattened on the host: the varlen arrays a forward pass needs, built from the scheduled sequences.

`build_host_batch` is the step's batch; `profile_batch` is the largest batch the scheduler can produce, run
once on a GPU to measure peak activation memory before the KV cache is sized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..step import ScheduledSeq
from .seq_states import SeqState


@dataclass(frozen=True, slots=True)
class HostBatch:
    """One step flattened on the host: T new tokens of S sequences."""

    input_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    query_lens: np.ndarray  # [S]
    seq_lens: np.ndarray  # [S] context length including the new tokens
    block_tables: np.ndarray  # [S, max_blocks] int32, 0-padded
    slot_mapping: np.ndarray  # [T]
    logits_indices: np.ndarray  # rows of the tokens whose logits are sampled
    sample_idx: list[int]  # which sequences sample
    # KV-cache groups 1..G-1 of a model with several (engine.core.kv_groups): their (block_tables, slot_mapping);
    # block_tables and slot_mapping above are group 0's.
    more_groups: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    @property
    def decode_only(self) -> bool:
        return bool(len(self.query_lens)) and bool((self.query_lens == 1).all())


def build_host_batch(seqs: Sequence[ScheduledSeq], states: Sequence[SeqState], block_size: int,
                     num_kv_groups: int = 1) -> HostBatch:
    """Flatten the scheduled sequences (`states[i]` is `seqs[i]`'s) into numpy arrays (no device work). With
    several KV-cache groups each state's block table interleaves them (entry i * G + g is logical block i of
    group g) and every group gets its own block table and slot mapping."""
    bs = block_size
    query_lens = np.fromiter((s.num_new for s in seqs), dtype=np.int64, count=len(seqs))
    starts = np.fromiter((s.start for s in seqs), dtype=np.int64, count=len(seqs))
    seq_lens = starts + query_lens
    cu = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(query_lens, out=cu[1:])
    total = int(cu[-1])
    ids: list[int] = []
    for s, st in zip(seqs, states):
        ids.extend(st.token_ids[s.start:s.start + s.num_new])
    seq_of_token = np.repeat(np.arange(len(seqs)), query_lens)
    positions = np.arange(total, dtype=np.int64) - cu[:-1][seq_of_token] + starts[seq_of_token]
    max_blocks = max(len(st.block_ids) for st in states)
    block_tables = np.zeros((len(seqs), max_blocks), dtype=np.int32)
    for i, st in enumerate(states):
        block_tables[i, :len(st.block_ids)] = st.block_ids
    tables = [block_tables] if num_kv_groups == 1 else \
        [np.ascontiguousarray(block_tables[:, g::num_kv_groups]) for g in range(num_kv_groups)]
    slots = [t[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs for t in tables]
    sample_idx = [i for i, s in enumerate(seqs) if s.sample]
    return HostBatch(np.asarray(ids, dtype=np.int64), positions, query_lens, seq_lens, tables[0],
                     slots[0], cu[1:][sample_idx] - 1, sample_idx, tuple(zip(tables[1:], slots[1:])))


def profile_batch(num_tokens: int, max_seq_len: int, block_size: int, max_num_seqs: int,
                  num_kv_groups: int = 1) -> HostBatch:
    """The largest step the scheduler can produce: `num_tokens` prompt tokens (the token budget) in as few
    sequences of at most `max_seq_len` tokens as fit (never more than `max_num_seqs`), over a throwaway
    one-block cache (block 0). Every slot write lands in block 0, and each block table has a column for every
    key position, all pointing at block 0, so the attention kernels read only that block. The last rows
    produce logits, up to `max_num_seqs` of them, as a step full of sampling sequences would. Every KV-cache
    group gets the same table and slots (block 0)."""
    num_seqs = min(max_num_seqs, -(-num_tokens // max_seq_len))
    lens = np.full(num_seqs, min(max_seq_len, num_tokens), dtype=np.int64)
    lens[-1] = min(max_seq_len, num_tokens - max_seq_len * (num_seqs - 1))
    n = int(lens.sum())
    positions = np.concatenate([np.arange(k, dtype=np.int64) for k in lens])
    width = -(-int(lens.max()) // block_size)
    tables, slots = np.zeros((num_seqs, width), dtype=np.int32), positions % block_size
    return HostBatch(np.zeros(n, dtype=np.int64), positions, lens, lens.copy(), tables, slots,
                     np.arange(n - min(n, max_num_seqs), n), [], ((tables, slots),) * (num_kv_groups - 1))
