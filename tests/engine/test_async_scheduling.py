"""Asynchronous scheduling: step N+1 is scheduled and launched before step N's tokens reach the engine.

The output must be exactly the synchronous engine's (and so HF's for greedy): the scheduler counts in-flight
tokens as pending, the worker reads their values on the device, a token sampled for a sequence that ended
meanwhile is dropped, and a request's last token is never followed by another step.
"""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import SchedulerConfig
from engine.core.kv_cache_manager import KVCacheManager
from engine.core.request import RequestStatus
from engine.core.scheduler import Scheduler
from engine.step import CachedSeq, NewSeq, SamplingOptions, SchedulerOutput
from tests.engine.helpers_core import BLOCK_SIZE, chained_hashes, make_request, seq_view


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (see tests/conftest.py)."""


def scheduler(num_blocks: int = 16, budget: int = 64) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=num_blocks * BLOCK_SIZE)
    return Scheduler(config, KVCacheManager(num_blocks, BLOCK_SIZE, True))


# ---- the scheduler with tokens in flight ---------------------------------------------------------------------

def test_a_decode_is_scheduled_before_its_input_token_is_known_and_the_worker_gets_it_later():
    sched = scheduler()
    sched.add_request(make_request("a", [5, 6, 7], max_tokens=4))
    first = sched.schedule()
    sched.on_step_done(first)  # launched: one token in flight
    second = sched.schedule()
    assert seq_view(second) == [("a", 3, 1, True)]
    assert second.seqs[0] == CachedSeq("a", (), (), 3, 1, True)  # the worker has the token on the device
    sched.on_step_done(second)
    req = sched.requests["a"]
    assert req.num_pending_tokens == 2
    req.append_output_token(40, now=0.0)  # the first step's token arrives
    third = sched.schedule()
    seq = third.seqs[0]
    assert (seq.new_token_ids, seq.start, seq.num_new, seq.sample) == ((40,), 4, 1, True)
    assert req.num_pending_tokens == 1


def test_a_request_whose_token_in_flight_is_its_last_is_not_scheduled_again():
    sched = scheduler()
    sched.add_request(make_request("a", [5, 6, 7], max_tokens=2))
    sched.add_request(make_request("b", [8, 9], max_tokens=5))
    sched.on_step_done(sched.schedule())
    sched.on_step_done(out := sched.schedule())
    assert [s.request_id for s in out.seqs] == ["a", "b"]
    # "a" now has 2 tokens in flight = max_tokens: a third step would compute a token nobody gets
    assert [s.request_id for s in sched.schedule().seqs] == ["b"]


def test_the_block_a_token_in_flight_completes_is_cached_once_the_token_is_known():
    sched = scheduler()
    prompt = [5, 6, 7]  # block size 4: the first output token completes block 0
    sched.add_request(make_request("a", prompt, max_tokens=6))
    sched.on_step_done(sched.schedule())
    sched.on_step_done(sched.schedule())  # computes position 3 with the token still unknown here
    block0 = sched.kv.req_to_blocks["a"][0]
    assert block0.block_hash is None
    req = sched.requests["a"]
    req.append_output_token(11, now=0.0)
    sched.schedule()
    assert block0.block_hash == chained_hashes(prompt + [11], BLOCK_SIZE)[0]


def test_a_preempted_request_with_a_token_in_flight_waits_for_that_token():
    sched = scheduler(num_blocks=2, budget=8)  # 2 blocks of 4: two 4-token prompts that grow cannot both fit
    sched.add_request(make_request("a", [1, 2, 3, 4], max_tokens=5))
    sched.add_request(make_request("b", [5, 6, 7, 8], max_tokens=5))
    sched.on_step_done(sched.schedule())
    out = sched.schedule()  # both need a second block: the newest, "b", is preempted
    assert out.preempted_ids == ("b",)
    b = sched.requests["b"]
    assert (b.status, b.num_pending_tokens) == (RequestStatus.PREEMPTED, 1)
    sched.on_step_done(out)
    sched.finish_request("a", RequestStatus.FINISHED_STOPPED)  # room again, but "b"'s token is not back yet
    assert sched.schedule().seqs == ()
    b.append_output_token(9, now=0.0)
    resumed = sched.schedule().seqs[0]
    assert isinstance(resumed, NewSeq) and resumed.token_ids == (5, 6, 7, 8, 9)


# ---- the engine ------------------------------------------------------------------------------------------------

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("setup", [dict(max_num_batched_tokens=7), dict(block_size=4, num_kv_blocks=20),
                                   dict(block_size=16)])
def test_asynchronous_greedy_output_is_hfs(setup, tiny_model_dir, hf_greedy_fn, prompts_fn):
    """Chunked prefill mixed with decodes, repeated preemption, and prefix-cache hits."""
    shared = prompts_fn(1, [33], seed=7)[0]
    prompts = prompts_fn(4, [1, 5, 17, 60]) + [shared + [9, 10], shared + [11]]
    expected = hf_greedy_fn(tiny_model_dir("llama"), prompts, 12)
    llm = LLM(tiny_model_dir("llama"), device="cpu", async_scheduling=True, **setup)
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == expected
    pool = llm.engine.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


SAMPLING = {
    "seeded n=3, top-p": SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=10, seed=7, ignore_eos=True),
    "penalties, top-k, min_tokens, logprobs": SamplingParams(
        temperature=0.8, top_k=20, presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.3,
        min_tokens=4, max_tokens=10, seed=3, logprobs=3),
    "greedy, stop tokens": SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[100, 200, 300, 400, 2]),
}


def outputs(llm: LLM, prompts, params) -> list:
    return [[(c.token_ids, c.finish_reason, c.stop_reason,
              [(lp.token_id, lp.logprob, lp.top) for lp in c.logprobs or []]) for c in r.outputs]
            for r in llm.generate(prompts, params)]


@pytest.mark.parametrize("name", list(SAMPLING))
def test_asynchronous_sampling_equals_synchronous(name, tiny_model_dir, prompts_fn):
    prompts = prompts_fn(6, [1, 5, 16, 17, 33, 60], seed=4)
    params = SAMPLING[name]
    sync = outputs(LLM(tiny_model_dir("llama"), device="cpu", block_size=4, num_kv_blocks=24), prompts, params)
    llm = LLM(tiny_model_dir("llama"), device="cpu", block_size=4, num_kv_blocks=24, async_scheduling=True)
    assert outputs(llm, prompts, params) == sync
    if name == "greedy, stop tokens":
        assert any(c[1] == "stop" for r in sync for c in r), "no sequence stopped early: the test proves nothing"


@pytest.mark.slow
def test_asynchronous_stop_strings_equal_synchronous():
    """Stop strings are checked on the host after a token arrives, one step after the next was launched: the
    extra token is dropped, the text is the same."""
    prompts = ["The capital of France is", "1, 2, 3, 4,", "def fib(n):"]
    params = SamplingParams(temperature=0, max_tokens=24, stop=[",", "\n"])
    sync = LLM(device="cpu", async_scheduling=False)
    expected = [(o.text, o.finish_reason, o.stop_reason) for o in
                (r.outputs[0] for r in sync.generate(prompts, params))]
    del sync
    got = [(o.text, o.finish_reason, o.stop_reason) for o in
           (r.outputs[0] for r in LLM(device="cpu", async_scheduling=True).generate(prompts, params))]
    assert got == expected
    assert sum(reason == "stop" for _, reason, _ in expected) >= 2


def test_asynchronous_step_returns_the_previous_steps_tokens(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), device="cpu", async_scheduling=True)
    engine = llm.engine
    engine.add_request("a", [5, 6, 7], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    tokens_per_step = [sum(len(d.new_token_ids) for d in engine.step().deltas) for _ in range(4)]
    assert tokens_per_step == [0, 1, 1, 1]  # the first step's token comes out of the second call
    assert not engine.has_unfinished_requests()


def test_abort_with_a_token_in_flight_frees_everything_and_drops_the_token(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), device="cpu", async_scheduling=True)
    engine = llm.engine
    engine.add_request("a", [5, 6, 7], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.scheduler.requests["a"].num_pending_tokens == 1
    assert engine.abort_request("a")
    deltas = engine.step().deltas  # processes the in-flight step: its token for "a" is nobody's
    assert [(d.request_id, d.finish_reason, d.new_token_ids) for d in deltas] == [("a", "abort", [])]
    assert not engine.has_unfinished_requests()
    pool = engine.kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_a_reused_request_id_never_gets_the_previous_requests_token_in_flight(tiny_model_dir, hf_greedy_fn):
    llm = LLM(tiny_model_dir("llama"), device="cpu", async_scheduling=True)
    engine = llm.engine
    engine.add_request("x", [5, 6, 7], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.step()
    engine.step()
    engine.abort_request("x")  # its second token is still in flight
    engine.add_request("x", [9, 10, 11, 12], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    tokens = []
    while engine.has_unfinished_requests():
        tokens += [t for d in engine.step().deltas for t in d.new_token_ids]
    assert tokens == hf_greedy_fn(tiny_model_dir("llama"), [[9, 10, 11, 12]], 4)[0]


def test_the_worker_refuses_a_decode_whose_input_token_it_never_sampled(tiny_model_dir):
    from engine.worker.model_runner import ModelRunner

    runner = LLM(tiny_model_dir("llama"), device="cpu").engine.runner
    assert isinstance(runner, ModelRunner)
    opts = SamplingOptions(temperature=0.0)
    runner.execute(SchedulerOutput((NewSeq("a", (5, 6, 7), 3, (0,), 0, 3, False, opts),), (), (), 3, 3, 0, 0))
    with pytest.raises(RuntimeError, match="neither known nor sampled"):
        runner.execute(SchedulerOutput((CachedSeq("a", (), (), 3, 1, True),), (), (), 1, 0, 0, 0))
