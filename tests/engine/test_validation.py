"""Bad input raises ValueError naming the parameter, changes nothing, and the engine keeps serving."""

from __future__ import annotations

import math

import pytest

from engine import LLM, ParamError, SamplingParams


@pytest.mark.parametrize("kwargs, param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"stop": ["x"] * 100}, "stop"),
    ({"logprobs": 1000}, "logprobs"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
])
def test_bad_sampling_params_name_the_parameter(kwargs, param):
    with pytest.raises(ValueError) as info:
        SamplingParams(**kwargs)
    assert isinstance(info.value, ParamError) and info.value.param == param
    assert str(info.value).startswith(param)


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir("llama"), device="cpu", max_model_len=64)


@pytest.mark.parametrize("prompt, params, param", [
    ([], SamplingParams(max_tokens=4), "prompt"),
    ([1] * 64, SamplingParams(max_tokens=1), "prompt"),
    ([1] * 60, SamplingParams(max_tokens=10), "max_tokens"),
    ([1, 2, 100000], SamplingParams(max_tokens=4), "prompt"),
    ([1, -1], SamplingParams(max_tokens=4), "prompt"),
    ("text needs a tokenizer", SamplingParams(max_tokens=4), "prompt"),
    ([1, 2], SamplingParams(max_tokens=4, stop_token_ids=[10**6]), "stop_token_ids"),
])
def test_bad_requests_are_refused_and_the_engine_keeps_serving(llm, prompt, params, param):
    with pytest.raises(ValueError) as info:
        llm.generate([prompt], params)
    assert getattr(info.value, "param", None) == param
    assert not llm.engine.has_unfinished_requests()
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert len(out[0].token_ids) == 3


def test_context_overflow_message_states_both_numbers(llm):
    with pytest.raises(ValueError, match=r"prompt \(60 tokens\) plus max_tokens \(10\).*context window of 64"):
        llm.generate([[1] * 60], SamplingParams(max_tokens=10))


def test_a_bad_request_does_not_disturb_running_ones(llm):
    engine = llm.engine
    engine.add_request("good", [5, 6, 7], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    engine.step()
    with pytest.raises(ValueError):
        engine.add_request("bad", [], SamplingParams())
    with pytest.raises(ValueError):
        engine.add_request("good", [5], SamplingParams())  # id in use
    tokens = []
    while engine.has_unfinished_requests():
        tokens += [t for d in engine.step().deltas for t in d.new_token_ids]
    # "good" produced its 6 tokens (1 in the first step, 5 after)
    assert len(tokens) == 5


def test_request_needing_more_blocks_than_the_cache_is_refused(tiny_model_dir):
    llm = LLM(tiny_model_dir("llama"), device="cpu", block_size=4, num_kv_blocks=3)
    with pytest.raises(ValueError, match="KV blocks") as info:
        llm.generate([[1] * 10], SamplingParams(max_tokens=5))
    assert info.value.param == "max_tokens"


def test_abort_frees_every_block(llm):
    engine = llm.engine
    engine.add_request("a", list(range(3, 40)), SamplingParams(max_tokens=20, ignore_eos=True))
    engine.add_request("b", list(range(3, 20)), SamplingParams(max_tokens=20, ignore_eos=True))
    engine.step()
    assert engine.kv.pool.num_used_blocks > 0
    assert engine.abort_request("a") and engine.abort_request("b")
    assert not engine.abort_request("a")
    final = engine.step().deltas
    assert sorted((d.request_id, d.finish_reason) for d in final) == [("a", "abort"), ("b", "abort")]
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks
    assert not engine.has_unfinished_requests()


def test_a_request_that_exactly_fills_the_cache_is_accepted(tiny_model_dir):
    # 3 blocks of 4 = 12 slots; an 8-token prompt + 5 new tokens writes K/V for 12 tokens (the last sampled
    # token is never fed back), so it fits exactly.
    llm = LLM(tiny_model_dir("llama"), device="cpu", block_size=4, num_kv_blocks=3)
    out = llm.generate([[5] * 8], SamplingParams(max_tokens=5, ignore_eos=True))[0]
    assert len(out.token_ids) == 5


def test_min_tokens_holds_back_stop_tokens(llm):
    prompt = [5, 6, 7, 8]
    free = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0].token_ids
    first = free[0]
    # the greedy first token, declared a stop token, ends the request at once...
    stopped = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[first]))[0]
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    assert stopped.outputs[0].stop_reason == first
    # ...but not before min_tokens: it cannot even be sampled until 3 tokens exist
    held = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, min_tokens=3, stop_token_ids=[first]))[0]
    assert len(held.token_ids) >= 3 and first not in held.token_ids[:3]


def test_min_tokens_is_checked_against_the_context_when_max_tokens_is_null(llm):
    params = SamplingParams(max_tokens=None, min_tokens=60)  # the prompt leaves 64 - 10 = 54 tokens
    with pytest.raises(ParamError) as info:
        llm.engine.add_request("x", list(range(1, 11)), params)
    assert info.value.param == "min_tokens" and "54" in str(info.value) and "60" in str(info.value)
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("temperature", [1e-38, 1e-30, 1e-6])
def test_a_vanishing_temperature_is_greedy(llm, temperature):
    """Logits divided by ~1e-38 overflow to inf; such temperatures mean greedy, as 0 does."""
    prompt = [5, 9, 13, 2, 7]
    greedy = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    tiny = llm.generate([prompt], SamplingParams(temperature=temperature, max_tokens=8, ignore_eos=True))[0]
    assert SamplingParams(temperature=temperature).greedy
    assert tiny.outputs[0].token_ids == greedy.outputs[0].token_ids
