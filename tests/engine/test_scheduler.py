"""Scheduler over a real KVCacheManager (block_size 4), driven by a fake runner (`run_step`) that appends a
deterministic token per sampling sequence. Each step is written as (request_id, start, num_new, sample)."""

from __future__ import annotations

import pytest

from engine.config import SchedulerConfig
from engine.core.kv_cache_manager import KVCacheManager
from engine.core.request import RequestStatus
from engine.core.scheduler import Scheduler
from engine.step import NewSeq
from tests.engine.helpers_core import (BLOCK_SIZE, assert_all_free, assert_kv_consistent, make_request, queue_ids,
                                       run_step, seq_view, solo_output)

P8 = list(range(10, 18))


def scheduler(num_blocks: int = 16, budget: int = 32, max_num_seqs: int = 8) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=256),
                     KVCacheManager(num_blocks, BLOCK_SIZE))


def add(sched: Scheduler, request_id: str, prompt: list[int], max_tokens: int = 4, **kw):
    req = make_request(request_id, prompt, max_tokens, **kw)
    sched.add_request(req)
    return req


def run_until_idle(sched: Scheduler, max_steps: int = 100) -> int:
    for step in range(1, max_steps + 1):
        run_step(sched)
        assert_kv_consistent(sched)
        if not sched.requests:
            return step
    raise AssertionError(f"requests still unfinished after {max_steps} steps: {list(sched.requests)}")


# ---- prefill, chunking, decode ----------------------------------------------------------------------------

def test_short_prompt_is_prefilled_in_one_step_then_decoded_one_token_per_step():
    sched = scheduler()
    add(sched, "a", [1, 2, 3, 4, 5, 6], max_tokens=3)
    assert [seq_view(run_step(sched)) for _ in range(3)] == [
        [("a", 0, 6, True)], [("a", 6, 1, True)], [("a", 7, 1, True)]]
    assert sched.requests == {}


def test_long_prompt_is_chunked_over_steps_and_samples_only_on_its_last_chunk():
    sched = scheduler(budget=4)
    req = add(sched, "a", list(range(1, 11)), max_tokens=2)
    views, outputs = [], []
    for _ in range(4):
        views.append(seq_view(run_step(sched)))
        outputs.append(req.num_output_tokens)
    assert views == [[("a", 0, 4, False)], [("a", 4, 4, False)], [("a", 8, 2, True)], [("a", 10, 1, True)]]
    assert outputs == [0, 0, 1, 2]
    assert req.status == RequestStatus.FINISHED_LENGTH


def test_token_budget_is_shared_exactly_and_the_last_admitted_prompt_is_chunked():
    sched = scheduler(budget=8)
    add(sched, "a", [1] * 5)
    add(sched, "b", [2] * 5)
    first, second = run_step(sched), run_step(sched)
    assert seq_view(first) == [("a", 0, 5, True), ("b", 0, 3, False)]
    assert first.num_scheduled_tokens == 8
    assert seq_view(second) == [("a", 5, 1, True), ("b", 3, 2, True)]
    assert second.num_scheduled_tokens == 3


def test_scheduled_tokens_never_exceed_the_budget_under_load():
    sched = scheduler(budget=7, num_blocks=64)
    for i in range(6):
        add(sched, f"r{i}", [i + 1] * (3 + 2 * i), max_tokens=5)
    totals = []
    while sched.requests:
        out = run_step(sched)
        totals.append(out.num_scheduled_tokens)
        assert out.num_scheduled_tokens == sum(s.num_new for s in out.seqs) <= 7
    assert max(totals) == 7


def test_running_requests_are_scheduled_before_waiting_ones():
    sched = scheduler(budget=6)
    add(sched, "a", [1, 2, 3, 4], max_tokens=4)
    run_step(sched)
    add(sched, "b", [5, 6, 7, 8])
    add(sched, "c", [9, 10, 11, 12])
    assert seq_view(run_step(sched)) == [("a", 4, 1, True), ("b", 0, 4, True), ("c", 0, 1, False)]


def test_running_decodes_use_the_whole_budget_and_keep_waiting_requests_out():
    sched = scheduler(budget=3)
    for rid in "abcd":
        add(sched, rid, [7], max_tokens=3)
    assert [seq_view(run_step(sched)) for _ in range(2)] == [
        [("a", 0, 1, True), ("b", 0, 1, True), ("c", 0, 1, True)],
        [("a", 1, 1, True), ("b", 1, 1, True), ("c", 1, 1, True)]]
    assert [r.request_id for r in sched.waiting] == ["d"]


def test_waiting_requests_are_admitted_first_come_first_served():
    sched = scheduler(budget=4)
    for rid in "cab":
        add(sched, rid, [1, 2, 3, 4], max_tokens=1)
    assert [seq_view(run_step(sched)) for _ in range(3)] == [
        [("c", 0, 4, True)], [("a", 0, 4, True)], [("b", 0, 4, True)]]


def test_waiting_head_that_does_not_fit_holds_back_later_requests_that_would():
    sched = scheduler(num_blocks=4)
    add(sched, "a", list(range(1, 10)), max_tokens=4)  # 3 blocks
    run_step(sched)
    add(sched, "b", list(range(20, 28)))  # 2 blocks: only 1 free
    add(sched, "c", [30, 31])  # 1 block: would fit
    assert seq_view(run_step(sched)) == [("a", 9, 1, True)]
    assert [r.request_id for r in sched.waiting] == ["b", "c"]
    assert queue_ids(sched.kv.pool) == [3]


def test_max_num_seqs_caps_the_running_batch():
    sched = scheduler(max_num_seqs=2)
    for rid in "abc":
        add(sched, rid, [1, 2], max_tokens=2)
    views = [seq_view(run_step(sched)) for _ in range(3)]
    assert views == [[("a", 0, 2, True), ("b", 0, 2, True)],
                     [("a", 2, 1, True), ("b", 2, 1, True)],
                     [("c", 0, 2, True)]]


def test_step_output_counts_prompt_work_and_decode_tokens_apart():
    sched = scheduler(budget=8)
    add(sched, "a", [1, 2, 3])
    run_step(sched)
    add(sched, "b", [4, 5, 6, 7, 8])
    out = run_step(sched)
    assert seq_view(out) == [("a", 3, 1, True), ("b", 0, 5, True)]
    assert (out.num_scheduled_tokens, out.num_prompt_tokens) == (6, 5)


def test_scheduled_block_ids_cover_every_token_written_this_step():
    sched = scheduler()
    add(sched, "a", list(range(1, 7)))
    out = run_step(sched)
    (seq,) = out.seqs
    assert isinstance(seq, NewSeq)
    assert seq.block_ids == (0, 1)
    assert seq.token_ids[:6] == (1, 2, 3, 4, 5, 6)
    assert seq.num_prompt_tokens == 6


# ---- preemption -----------------------------------------------------------------------------------------

A_PROMPT, B_PROMPT = [1, 2, 3, 4], [5, 6, 7, 8]


def two_requests_filling_four_blocks():
    """a and b, 4-token prompts, decode until each has 8 computed tokens: all 4 blocks in use."""
    sched = scheduler(num_blocks=4)
    a = add(sched, "a", A_PROMPT, max_tokens=8)
    b = add(sched, "b", B_PROMPT, max_tokens=8)
    for _ in range(5):
        out = run_step(sched)
        assert out.preempted_ids == ()
    assert (sched.kv.block_ids("a"), sched.kv.block_ids("b")) == ([0, 2], [1, 3])
    assert (a.num_computed_tokens, a.num_tokens, b.num_computed_tokens, b.num_tokens) == (8, 9, 8, 9)
    assert queue_ids(sched.kv.pool) == []
    return sched, a, b


def test_newest_running_request_is_preempted_when_the_oldest_needs_a_block():
    sched, a, b = two_requests_filling_four_blocks()
    out = run_step(sched)
    assert out.preempted_ids == ("b",)
    assert seq_view(out) == [("a", 8, 1, True)]
    assert sched.kv.block_ids("a") == [0, 2, 3]  # b's last block was freed first, so a reuses it
    assert sched.kv.block_ids("b") == []
    assert queue_ids(sched.kv.pool) == [1]
    assert (b.status, b.num_computed_tokens, b.num_preemptions) == (RequestStatus.PREEMPTED, 0, 1)
    assert b.output_token_ids == solo_output(B_PROMPT, 5)  # its tokens are kept for the recompute
    assert [r.request_id for r in sched.waiting] == ["b"]
    assert [r.request_id for r in sched.running] == ["a"]
    assert sched.num_preemptions_total == 1
    assert_kv_consistent(sched)


def test_preempted_request_goes_to_the_front_of_the_waiting_queue():
    sched, a, b = two_requests_filling_four_blocks()
    add(sched, "c", [9, 9, 9])
    run_step(sched)
    assert [r.request_id for r in sched.waiting] == ["b", "c"]


def test_preempted_request_resumes_from_its_cached_prompt_block_once_blocks_free_up():
    sched, a, b = two_requests_filling_four_blocks()
    views = [seq_view(run_step(sched)) for _ in range(4)]
    assert views == [
        [("a", 8, 1, True)],
        [("a", 9, 1, True)],
        [("a", 10, 1, True)],  # a finishes: 8 tokens
        [("b", 4, 5, True)],  # b hits its prompt block (block 1), recomputes its 5 output tokens, samples
    ]
    assert a.status == RequestStatus.FINISHED_LENGTH
    assert sched.kv.block_ids("b") == [1, 3, 2]


def test_preempted_request_completes_with_the_tokens_it_would_have_produced_alone():
    sched, a, b = two_requests_filling_four_blocks()
    run_until_idle(sched)
    assert (a.status, b.status) == (RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_LENGTH)
    assert a.output_token_ids == solo_output(A_PROMPT, 8)
    assert b.output_token_ids == solo_output(B_PROMPT, 8)
    assert (a.num_preemptions, b.num_preemptions) == (0, 1)
    assert_all_free(sched.kv)


def test_preemption_picks_the_newest_request_not_the_next_one():
    sched = scheduler(num_blocks=5)
    add(sched, "a", P8, max_tokens=4)  # blocks 0, 1
    add(sched, "b", [1, 2, 3, 4], max_tokens=4)  # block 2
    add(sched, "c", [5, 6, 7, 8, 9, 10, 11, 12], max_tokens=4)  # blocks 3, 4
    run_step(sched)
    out = run_step(sched)  # a and b each need a new block: preempting c frees two
    assert out.preempted_ids == ("c",)
    assert seq_view(out) == [("a", 8, 1, True), ("b", 4, 1, True)]
    assert (sched.kv.block_ids("a"), sched.kv.block_ids("b")) == ([0, 1, 4], [2, 3])


def test_newest_request_that_needs_a_block_preempts_itself_and_older_ones_still_run():
    sched = scheduler(num_blocks=3)
    add(sched, "a", [1, 2, 3, 4, 5, 6], max_tokens=4)  # blocks 0, 1 with room to grow
    add(sched, "b", [7, 8, 9, 10], max_tokens=4)  # block 2, full
    run_step(sched)
    out = run_step(sched)
    assert out.preempted_ids == ("b",)
    assert seq_view(out) == [("a", 6, 1, True)]
    assert [r.request_id for r in sched.waiting] == ["b"]


def test_preemption_never_fails_a_request_and_every_request_completes():
    sched = scheduler(num_blocks=6, budget=16)
    reqs = [add(sched, f"r{i}", [i + 1] * (2 + 3 * i), max_tokens=7) for i in range(5)]
    run_until_idle(sched, max_steps=200)
    assert sched.num_preemptions_total > 0
    assert [r.status for r in reqs] == [RequestStatus.FINISHED_LENGTH] * 5
    assert [r.output_token_ids for r in reqs] == [solo_output(r.prompt_token_ids, 7) for r in reqs]
    assert_all_free(sched.kv)


# ---- n > 1 siblings ---------------------------------------------------------------------------------------

def test_siblings_wait_for_the_first_prompt_then_share_its_blocks():
    sched = scheduler()
    add(sched, "f", P8 + [1, 2])
    add(sched, "s1", P8 + [1, 2], wait_for="f")
    add(sched, "s2", P8 + [1, 2], wait_for="f")
    first = run_step(sched)
    assert seq_view(first) == [("f", 0, 10, True)]
    assert [r.request_id for r in sched.waiting] == ["s1", "s2"]

    second = run_step(sched)
    assert seq_view(second) == [("f", 10, 1, True), ("s1", 8, 2, True), ("s2", 8, 2, True)]
    assert [sched.kv.block_ids(r) for r in ("f", "s1", "s2")] == [[0, 1, 2], [0, 1, 3], [0, 1, 4]]
    assert [b.ref_cnt for b in sched.kv.pool.blocks[:5]] == [3, 3, 1, 1, 1]
    assert (second.prefix_cache_queries, second.prefix_cache_hits) == (20, 16)
    assert [sched.requests[r].num_cached_tokens for r in ("f", "s1", "s2")] == [0, 8, 8]


def test_siblings_keep_waiting_while_the_first_prompt_is_chunked():
    sched = scheduler(budget=4)
    add(sched, "f", P8 + [1, 2])
    add(sched, "s1", P8 + [1, 2], wait_for="f")
    add(sched, "s2", P8 + [1, 2], wait_for="f")
    views = [seq_view(run_step(sched)) for _ in range(4)]
    assert views == [
        [("f", 0, 4, False)],
        [("f", 4, 4, False)],
        [("f", 8, 2, True)],  # 2 tokens of budget left, but the siblings wait
        [("f", 10, 1, True), ("s1", 8, 2, True), ("s2", 8, 1, False)],
    ]


def test_waiting_siblings_do_not_hold_back_later_requests():
    sched = scheduler(budget=4)
    add(sched, "f", P8 + [1, 2])
    add(sched, "s1", P8 + [1, 2], wait_for="f")
    add(sched, "x", [50, 51])
    run_step(sched)
    run_step(sched)
    assert seq_view(run_step(sched)) == [("f", 8, 2, True), ("x", 0, 2, True)]
    assert [r.request_id for r in sched.waiting] == ["s1"]


def test_sibling_of_a_finished_first_sequence_runs_and_hits_its_freed_blocks():
    sched = scheduler(budget=4)
    add(sched, "f", P8 + [1, 2])
    add(sched, "s1", P8 + [1, 2], wait_for="f")
    run_step(sched)
    sched.finish_request("f", RequestStatus.FINISHED_ABORTED)  # f computed only block 0
    assert seq_view(run_step(sched)) == [("s1", 4, 4, False)]
    assert sched.kv.block_ids("s1") == [0, 1]


# ---- finishing --------------------------------------------------------------------------------------------

def test_finish_request_frees_its_blocks_and_is_reported_by_the_next_step_only():
    sched = scheduler(num_blocks=4)
    add(sched, "a", [1, 2, 3, 4, 5], max_tokens=10)
    run_step(sched)
    finished = sched.finish_request("a", RequestStatus.FINISHED_ABORTED)
    assert finished.status == RequestStatus.FINISHED_ABORTED
    assert queue_ids(sched.kv.pool) == [2, 3, 1, 0]
    assert sched.schedule().finished_ids == ("a",)
    assert sched.schedule().finished_ids == ()
    assert_all_free(sched.kv)


def test_finish_request_of_a_waiting_request_removes_it_from_the_queue():
    sched = scheduler()
    add(sched, "a", [1])
    add(sched, "b", [2])
    sched.finish_request("a", RequestStatus.FINISHED_ABORTED)
    assert [r.request_id for r in sched.waiting] == ["b"]
    assert seq_view(run_step(sched)) == [("b", 0, 1, True)]


def test_finish_request_of_an_unknown_id_returns_none_and_changes_nothing():
    sched = scheduler()
    add(sched, "a", [1])
    assert sched.finish_request("zzz", RequestStatus.FINISHED_ABORTED) is None
    assert [r.request_id for r in sched.waiting] == ["a"]
    assert sched.schedule().finished_ids == ()


def test_add_request_with_an_id_in_use_is_rejected():
    sched = scheduler()
    add(sched, "a", [1])
    with pytest.raises(ValueError, match="request_id: 'a' is already in use"):
        add(sched, "a", [2])
    assert [r.prompt_token_ids for r in sched.waiting] == [[1]]
