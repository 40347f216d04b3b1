"""The scheduler state machine of test_engine_state_machine, on KV managers with sliding-window groups: one
window group (Mistral-like) or a full group beside a window group (Gemma-like, interleaved tables).

The fake runner simulates the paged cache slot by slot from what the steps send (the worker's own copy of each
block table, which keeps the ids of blocks the manager has since released): every step writes each new token
into its block in every group, then checks that every key a query reads (its window, in each group) holds the
right token. A released block that is still read, or one reused while a window still reads it, fails there.
Requests longer than the whole pool are allowed as long as they fit the window bound the engine validates with.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from engine.config import SchedulerConfig
from engine.core.kv_cache_manager import KVCacheManager
from engine.core.scheduler import Scheduler
from engine.step import SchedulerOutput
from engine.worker.seq_states import SeqStates
from tests.engine.helpers_core import BLOCK_SIZE, next_token_of
from tests.engine.test_engine_state_machine import PROMPTS, SchedulerMachine

LAYOUTS = [(4,), (6,), (9,), (None, 5), (None, 8), (7, 4)]


class WindowKVSimulator:
    def __init__(self, num_blocks: int, windows: tuple[int | None, ...]):
        self.windows = windows
        self.slots: list[list[int | None]] = [[None] * BLOCK_SIZE for _ in range(num_blocks)]
        self.mirror = SeqStates()
        self.keys_read = 0

    def _slot(self, table: list[int], pos: int, group: int) -> tuple[int, int]:
        block = table[(pos // BLOCK_SIZE) * len(self.windows) + group]
        assert block >= 0, f"position {pos} of group {group} is read but its block was released"
        return block, pos % BLOCK_SIZE

    def run(self, sched: Scheduler, out: SchedulerOutput) -> dict[str, int]:
        """One step (synchronous scheduling: every token is known); returns what each sampling sequence samples."""
        states = self.mirror.update(out)
        for st in states:
            assert st.token_ids == sched.requests[st.request_id].all_token_ids
        for s, st in zip(out.seqs, states):
            for pos in range(s.start, s.start + s.num_new):
                for g in range(len(self.windows)):
                    block, off = self._slot(st.block_ids, pos, g)
                    self.slots[block][off] = st.token_ids[pos]
        for s, st in zip(out.seqs, states):
            for q in range(s.start, s.start + s.num_new):
                for g, window in enumerate(self.windows):
                    first = 0 if window is None else max(0, q - window + 1)
                    got = [self.slots[b][o] for b, o in (self._slot(st.block_ids, k, g) for k in range(first, q + 1))]
                    assert got == st.token_ids[first:q + 1], f"{s.request_id} query {q} group {g} reads {got}"
                    self.keys_read += len(got)
        return {s.request_id: next_token_of(st.token_ids[:s.start + s.num_new])
                for s, st in zip(out.seqs, states) if s.sample}


class WindowSchedulerMachine(SchedulerMachine):
    @initialize(num_blocks=st.integers(3, 10), budget=st.integers(1, 12), max_num_seqs=st.integers(1, 4),
                caching=st.booleans(), windows=st.sampled_from(LAYOUTS))
    def setup(self, num_blocks, budget, max_num_seqs, caching, windows):
        kv = KVCacheManager(num_blocks, BLOCK_SIZE, caching, windows=windows, max_chunk_tokens=budget)
        sched = Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                                          max_model_len=256), kv)
        self.begin(sched, WindowKVSimulator(num_blocks, windows), async_=False)  # the simulator needs every token

    @rule(prompt=PROMPTS, max_tokens=st.integers(1, 24), n=st.integers(1, 2), salt=st.sampled_from([None, "t"]))
    def add(self, prompt, max_tokens, n, salt):
        """Trimmed the way the engine validates: the request alone must fit (`num_blocks_for`)."""
        kv = self.sched.kv
        while len(prompt) > 1 and kv.num_blocks_for(len(prompt)) > kv.num_blocks:
            prompt = prompt[:-1]
        while max_tokens > 1 and kv.num_blocks_for(len(prompt) + max_tokens - 1) > kv.num_blocks:
            max_tokens -= 1
        if kv.num_blocks_for(len(prompt) + max_tokens - 1) > kv.num_blocks:
            return
        self.tally["longer than the pool"] += int(len(prompt) + max_tokens > kv.num_blocks * BLOCK_SIZE)
        self.add_group(prompt, max_tokens, n, salt)


def test_window_scheduler_state_machine_reads_only_live_blocks_and_completes_every_request():
    tally = Counter()
    run_state_machine_as_test(lambda: WindowSchedulerMachine(tally),
                              settings=settings(max_examples=120, stateful_step_count=40, deadline=None))
    assert tally["preemptions"] > 0
    assert tally["longer than the pool"] > 0, "no request needed the window's release to fit"
