"""Property: no request body, however odd, gets a 5xx or harms the engine. Random mixes of valid and junk
values for every field go through the real server; each answer is a success or a 4xx in the envelope."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(300)

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                 st.text(max_size=6), st.lists(st.integers(-5, 60000), max_size=3), st.just({}))
SMALL = st.integers(1, 3)
NOT_NONE_JUNK = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=6))


def field(good: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good, good, JUNK)  # mostly plausible values, sometimes junk


COMMON = {
    "n": field(st.integers(1, 3)), "temperature": field(st.floats(0, 2)), "top_p": field(st.floats(0, 1)),
    "top_k": field(st.integers(-1, 2**70)), "min_p": field(st.floats(0, 1)),
    "presence_penalty": field(st.floats(-2, 2)), "frequency_penalty": field(st.floats(-2, 2)),
    "repetition_penalty": field(st.floats(0, 3)), "seed": field(st.integers(-(2**63), 2**63 - 1)),
    "stop": field(st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3))),
    "stop_token_ids": field(st.lists(st.integers(-1, 2**70), max_size=3)), "min_tokens": field(st.integers(0, 3)),
    "ignore_eos": field(st.booleans()), "skip_special_tokens": field(st.booleans()),
    "include_stop_str_in_output": field(st.booleans()), "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "model": field(st.just("tiny-llama")),
}
COMPLETION = st.fixed_dictionaries(
    {"prompt": field(st.one_of(st.text(min_size=1, max_size=20), st.lists(st.integers(0, 49151), min_size=1,
                                                                              max_size=8))),
     "max_tokens": st.one_of(SMALL, SMALL, NOT_NONE_JUNK)},  # never None: that runs to the context end
    optional=dict(COMMON, logprobs=field(st.integers(0, 5)), echo=field(st.just(False))))
MESSAGE = st.fixed_dictionaries({"role": field(st.sampled_from(["system", "user", "assistant"])),
                                 "content": field(st.text(max_size=20))})
CHAT = st.fixed_dictionaries(
    {"messages": field(st.lists(MESSAGE, min_size=1, max_size=3)), "max_completion_tokens": SMALL},
    optional=dict(COMMON, logprobs=field(st.booleans()), top_logprobs=field(st.integers(0, 5))))


def check(client: httpx.Client, path: str, body: dict) -> None:
    payload = json.dumps(body).encode()
    with client.stream("POST", path, content=payload, headers={"Content-Type": "application/json"}) as r:
        text = r.read().decode()
    assert r.status_code in (200, 400, 404), (r.status_code, text, body)
    if r.status_code != 200:
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert text.endswith("data: [DONE]\n\n") and '"error"' not in text, text


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=[Phase.generate])
@given(body=COMPLETION)
def test_any_completion_body_is_answered_without_a_server_error(client, body):
    check(client, "/v1/completions", body)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=[Phase.generate])
@given(body=CHAT)
def test_any_chat_body_is_answered_without_a_server_error(client, body):
    check(client, "/v1/chat/completions", body)


def test_the_engine_survived_the_fuzzing(server, client):
    assert httpx.get(server.url + "/health").status_code == 200
    assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
