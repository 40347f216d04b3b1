"""One step flattened on the host: the varlen arrays a forward pass needs, built from the scheduled sequences.

`HostBatchBuilder.build` makes the step's batch from the worker's sequence states. Block tables are kept per
slot in one persistent numpy table that changes only when a sequence gets new blocks, so a decode step
gathers its `[S, width]` table with one fancy index instead of converting every sequence's list. A decode
token the worker sampled in the previous step and the engine has not sent back yet (asynchronous scheduling)
is left as 0 in `input_ids`, and `pending_dst` / `pending_src` say where the device fills it in from the
previous step's sampled tokens.

`profile_batch` is the largest batch the scheduler can produce, run once on a GPU to measure peak activation
memory before the KV cache is sized.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..step import NewSeq, ScheduledSeq
from .seq_states import SeqState


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class HostBatch:
    """One step flattened on the host: T new tokens of S sequences, R of which sample."""

    input_ids: np.ndarray  # [T] int64 (0 where pending_dst fills it in on the device)
    positions: np.ndarray  # [T] int64
    query_lens: np.ndarray  # [S] int64
    seq_lens: np.ndarray  # [S] int64, context length including the new tokens
    block_tables: np.ndarray  # [S, max_blocks] int32, 0-padded
    slot_mapping: np.ndarray  # [T] int64
    logits_indices: np.ndarray  # [R] int64, rows of the tokens whose logits are sampled
    sample_idx: np.ndarray  # [R] int64, which sequences sample
    slots: np.ndarray = field(default_factory=_empty)  # [S] int64, each sequence's worker slot
    out_pos: np.ndarray = field(default_factory=_empty)  # [R] int64, output index of each sampled token
    # [P] int64: token rows whose id is the previous step's sample, and that sample's row in the previous step
    pending_dst: np.ndarray = field(default_factory=_empty)
    pending_src: np.ndarray = field(default_factory=_empty)
    # KV-cache groups 1..G-1 of a model with several (engine.core.kv_groups): their (block_tables, slot_mapping);
    # block_tables and slot_mapping above are group 0's.
    more_groups: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    # speculative decoding: [R] logits rows of each sampling sequence (1 + its drafts), empty when no
    # sequence has drafts; then logits_indices and out_pos have one entry per row, not per sequence
    row_counts: np.ndarray = field(default_factory=_empty)

    @property
    def row_slots(self) -> np.ndarray:
        """[rows] the worker slot of each logits row's sequence."""
        slots = self.slots[self.sample_idx]
        return slots if not len(self.row_counts) else np.repeat(slots, self.row_counts)

    @property
    def decode_only(self) -> bool:
        return bool(len(self.query_lens)) and bool((self.query_lens == 1).all())

    @property
    def cu_seqlens_q(self) -> np.ndarray:
        cu = np.zeros(len(self.query_lens) + 1, dtype=np.int32)
        np.cumsum(self.query_lens, out=cu[1:])
        return cu


class BlockTables:
    """Every live sequence's block table as one row of a persistent `[slots, blocks]` int32 table."""

    def __init__(self, num_slots: int = 8, max_blocks: int = 8):
        self.table = np.zeros((max(num_slots, 1), max(max_blocks, 1)), dtype=np.int32)
        self.num_blocks = np.zeros(max(num_slots, 1), dtype=np.int64)

    def _fit(self, slot: int, num_blocks: int) -> None:
        rows, cols = self.table.shape
        if slot < rows and num_blocks <= cols:
            return
        grown = np.zeros((max(rows * 2, slot + 1) if slot >= rows else rows,
                          max(cols * 2, num_blocks) if num_blocks > cols else cols), dtype=np.int32)
        grown[:rows, :cols] = self.table
        self.table = grown
        self.num_blocks = np.concatenate([self.num_blocks, np.zeros(len(grown) - rows, dtype=np.int64)])

    def set(self, slot: int, block_ids: list[int]) -> None:
        self._fit(slot, len(block_ids))
        self.table[slot, :len(block_ids)] = block_ids
        self.num_blocks[slot] = len(block_ids)

    def extend(self, slot: int, new_block_ids: Sequence[int], num_blocks: int) -> None:
        """`num_blocks`: the table's length with the new blocks (the last len(new_block_ids) of them)."""
        self._fit(slot, num_blocks)
        self.table[slot, num_blocks - len(new_block_ids):num_blocks] = new_block_ids
        self.num_blocks[slot] = num_blocks

    def gather(self, slots: np.ndarray) -> np.ndarray:
        width = int(self.num_blocks[slots].max()) if len(slots) else 0
        return self.table[slots, :max(width, 1)]


class HostBatchBuilder:
    """With several KV-cache groups each sequence's block table interleaves them (entry i * G + g is logical
    block i of group g) and every group gets its own block table and slot mapping."""

    def __init__(self, block_size: int, num_slots: int = 8, max_blocks: int = 8, num_kv_groups: int = 1):
        self.block_size = block_size
        self.num_kv_groups = num_kv_groups
        self.tables = BlockTables(num_slots, max_blocks * num_kv_groups)

    def build(self, seqs: Sequence[ScheduledSeq], states: Sequence[SeqState],
              prev_rows: Mapping[str, int] | None = None) -> HostBatch:
        """Flatten the scheduled sequences (`states[i]` is `seqs[i]`'s) into numpy arrays (no device work).
        `prev_rows`: request id -> row among the previous step's sampling sequences, for the sequences whose
        last token is that step's sample, still unknown here."""
        tables = self.tables
        ids: list[int] = []
        starts: list[int] = []
        query_lens: list[int] = []
        slots: list[int] = []
        num_prompt: list[int] = []
        sample: list[bool] = []
        pending_dst: list[int] = []
        pending_src: list[int] = []
        num_drafts: list[int] = []
        for s, st in zip(seqs, states):
            start, n, toks = s.start, s.num_new, st.token_ids
            drafts = s.draft_token_ids
            num_drafts.append(len(drafts))
            if type(s) is NewSeq:
                tables.set(st.slot, st.block_ids)
            elif s.new_block_ids or s.trim_blocks_to >= 0:
                tables.extend(st.slot, s.new_block_ids, len(st.block_ids))
            end = start + n
            if drafts:  # the last known token, then the proposed ones (speculative decoding)
                if end - len(drafts) != len(toks):
                    raise RuntimeError(f"{s.request_id}: drafts must follow its last known token")
                ids.extend(toks[start:])
                ids.extend(drafts)
            elif end <= len(toks):
                if n == 1:
                    ids.append(toks[start])
                else:
                    ids.extend(toks[start:end])
            else:  # the last token is this worker's own sample of the previous step
                ids.extend(toks[start:end - 1])
                if prev_rows is None or s.request_id not in prev_rows:
                    raise RuntimeError(f"{s.request_id}: its last token is neither known nor sampled by the "
                                       "previous step")
                pending_dst.append(len(ids))
                pending_src.append(prev_rows[s.request_id])
                ids.append(0)
            starts.append(start)
            query_lens.append(n)
            slots.append(st.slot)
            num_prompt.append(st.num_prompt_tokens)
            sample.append(s.sample)
        return self._flatten(ids, starts, query_lens, slots, num_prompt, sample, pending_dst, pending_src,
                             num_drafts if any(num_drafts) else None)

    def _flatten(self, ids, starts, query_lens, slots, num_prompt, sample, pending_dst, pending_src,
                 num_drafts=None) -> HostBatch:
        bs = self.block_size
        starts_a = np.array(starts, dtype=np.int64)
        qlens = np.array(query_lens, dtype=np.int64)
        slots_a = np.array(slots, dtype=np.int64)
        seq_lens = starts_a + qlens
        block_tables = self.tables.gather(slots_a)
        if len(ids) == len(starts):  # decode only: one token per sequence, at position start
            positions, seq_of_token = starts_a, np.arange(len(starts))
            cu_end = np.arange(1, len(starts) + 1, dtype=np.int64)
        else:
            cu_end = np.cumsum(qlens)
            seq_of_token = np.repeat(np.arange(len(starts)), qlens)
            positions = np.arange(len(ids), dtype=np.int64) - (cu_end - qlens)[seq_of_token] + starts_a[seq_of_token]
        groups = self.num_kv_groups
        tables = [block_tables] if groups == 1 else \
            [np.ascontiguousarray(block_tables[:, g::groups]) for g in range(groups)]
        slot_mapping, *more_slots = [t[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs
                                     for t in tables]
        sample_idx = np.flatnonzero(np.array(sample, dtype=bool))
        out_pos = seq_lens[sample_idx] - np.array(num_prompt, dtype=np.int64)[sample_idx]
        logits_indices = cu_end[sample_idx] - 1
        row_counts = _empty()
        if num_drafts is not None:  # k + 1 logits rows for a sequence with k drafts: positions start .. start + k
            k = np.array(num_drafts, dtype=np.int64)[sample_idx]
            row_counts = k + 1
            back = np.concatenate([np.arange(-kk, 1, dtype=np.int64) for kk in k.tolist()])  # -k .. 0 per sequence
            logits_indices = np.repeat(logits_indices, row_counts) + back
            out_pos = np.repeat(out_pos, row_counts) + back
        return HostBatch(np.array(ids, dtype=np.int64), positions, qlens, seq_lens, tables[0], slot_mapping,
                         logits_indices, sample_idx, slots_a, out_pos,
                         np.array(pending_dst, dtype=np.int64), np.array(pending_src, dtype=np.int64),
                         more_groups=tuple(zip(tables[1:], more_slots)), row_counts=row_counts)




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
                     np.arange(n - min(n, max_num_seqs), n), np.zeros(0, dtype=np.int64),
                     np.zeros(num_seqs, dtype=np.int64), more_groups=((tables, slots),) * (num_kv_groups - 1))
