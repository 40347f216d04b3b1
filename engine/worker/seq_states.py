"""The worker's copy of every sequence it runs: token ids, block table, sampling options and its slot.

A worker learns a sequence from a `NewSeq` and keeps it up to date from each `CachedSeq` (new tokens, new
blocks); it forgets it when the sequence finishes or is preempted. Each live sequence holds a *slot*, a small
integer that indexes the worker's persistent per-sequence tables (block-table rows, sampling parameters,
penalty counts on the device); a slot is reused once its sequence is gone. Pure Python, no torch: the
scheduler tests use it as the worker's mirror.

With asynchronous scheduling a step may compute a token the worker itself sampled in the previous step and
the engine has not sent back yet: then `start + num_new` is one past `token_ids` (see `ModelRunner`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..step import NewSeq, SamplingOptions, SchedulerOutput, ScheduledSeq


@dataclass(eq=False, slots=True)
class SeqState:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    block_ids: list[int]
    sampling: SamplingOptions
    slot: int = 0

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class SeqStates:
    def __init__(self) -> None:
        self.states: dict[str, SeqState] = {}
        self._free_slots: list[int] = []  # a min-heap, so live slots stay packed at the low end
        self._num_slots = 0
        self.new_states: list[SeqState] = []  # the sequences the last `update` learned (NewSeq)

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, request_id: str) -> SeqState:
        return self.states[request_id]

    @property
    def num_slots(self) -> int:
        """One more than the highest slot ever handed out: the size per-slot tables need."""
        return self._num_slots

    def update(self, out: SchedulerOutput) -> list[SeqState]:
        """Apply one step's changes; returns the scheduled sequences' states in batch order."""
        for rid in out.finished_ids + out.preempted_ids:
            self._drop(rid)
        self.new_states = []
        return [self._apply(seq) for seq in out.seqs]

    def _drop(self, request_id: str) -> None:
        state = self.states.pop(request_id, None)
        if state is not None:
            heapq.heappush(self._free_slots, state.slot)

    def _take_slot(self) -> int:
        if self._free_slots:
            return heapq.heappop(self._free_slots)
        self._num_slots += 1
        return self._num_slots - 1

    def _apply(self, seq: ScheduledSeq) -> SeqState:
        if isinstance(seq, NewSeq):
            self._drop(seq.request_id)  # defensive: a sequence sent whole again replaces its old copy
            state = SeqState(seq.request_id, list(seq.token_ids), seq.num_prompt_tokens, list(seq.block_ids),
                             seq.sampling, self._take_slot())
            self.states[seq.request_id] = state
            self.new_states.append(state)
        else:
            state = self.states[seq.request_id]
            if seq.new_token_ids:
                state.token_ids.extend(seq.new_token_ids)
            if seq.trim_blocks_to >= 0:  # blocks of rejected drafts were freed (speculative decoding)
                del state.block_ids[seq.trim_blocks_to:]
            if seq.new_block_ids:
                state.block_ids.extend(seq.new_block_ids)
        # one token past the known ones is allowed: the one this worker sampled last step (asynchronous);
        # drafts (speculative decoding) come after the known tokens
        assert seq.start + seq.num_new <= len(state.token_ids) + len(seq.draft_token_ids) + 1, \
            f"{seq.request_id}: scheduled past its tokens"
        return state
