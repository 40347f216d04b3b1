"""The worker's copy of every sequence it runs: token ids, block table and sampling options.

A worker learns a sequence from a `NewSeq` and keeps it up to date from each `CachedSeq` (new tokens, new
blocks); it forgets it when the sequence finishes or is preempted. Pure Python, no torch: the
scheduler tests use it as the worker's mirror.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..step import NewSeq, SamplingOptions, SchedulerOutput, ScheduledSeq


@dataclass(eq=False, slots=True)
class SeqState:
    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    block_ids: list[int]
    sampling: SamplingOptions

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class SeqStates:
    def __init__(self) -> None:
        self.states: dict[str, SeqState] = {}

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, request_id: str) -> SeqState:
        return self.states[request_id]

    def update(self, out: SchedulerOutput) -> list[SeqState]:
        """Apply one step's changes; returns the scheduled sequences' states in batch order."""
        for rid in out.finished_ids + out.preempted_ids:
            self.states.pop(rid, None)
        return [self._apply(seq) for seq in out.seqs]

    def _apply(self, seq: ScheduledSeq) -> SeqState:
        if isinstance(seq, NewSeq):
            state = SeqState(seq.request_id, list(seq.token_ids), seq.num_prompt_tokens, list(seq.block_ids),
                             seq.sampling)
            self.states[seq.request_id] = state
        else:
            state = self.states[seq.request_id]
            if seq.new_token_ids:
                state.token_ids.extend(seq.new_token_ids)
            if seq.new_block_ids:
                state.block_ids.extend(seq.new_block_ids)
        assert seq.start + seq.num_new <= len(state.token_ids), f"{seq.request_id}: scheduled past its tokens"
        return state
