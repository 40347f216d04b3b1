"""POST /v1/completions over real HTTP: outputs, choices, logprobs, stop strings, streaming, the openai client."""

from __future__ import annotations

import pytest

from engine import SamplingParams

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_greedy_text_prompts_match_offline_generate(client, offline_llm):
    expected = offline_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    for prompt, want in zip(PROMPTS, expected):
        body = complete(client, prompt=prompt, temperature=0, max_tokens=12, ignore_eos=True)
        assert body["choices"][0]["text"] == want.text
        assert dict(body["usage"], prompt_tokens_details=None) == {"prompt_tokens_details": None, "prompt_tokens": len(want.prompt_token_ids), "completion_tokens": 12,
                                 "total_tokens": len(want.prompt_token_ids) + 12}


def test_response_has_the_openai_shape(client):
    body = complete(client, prompt="Hello", max_tokens=3, temperature=0)
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "tiny-llama" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"


def test_token_id_prompt_gives_the_same_output_as_its_text(client):
    ids = client.post("/tokenize", json={"prompt": PROMPTS[0]}).json()["tokens"]
    by_text = complete(client, prompt=PROMPTS[0], temperature=0, max_tokens=8, ignore_eos=True)
    by_ids = complete(client, prompt=ids, temperature=0, max_tokens=8, ignore_eos=True)
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_ids["usage"] == by_text["usage"]


@pytest.mark.parametrize("prompt", [["Once upon a time"], [[9906, 1917]]])
def test_a_list_holding_one_prompt_is_that_prompt(client, prompt):
    body = complete(client, prompt=prompt, temperature=0, max_tokens=4)
    assert len(body["choices"]) == 1 and body["usage"]["completion_tokens"] == 4


def test_n_choices_each_count_in_usage(client):
    body = complete(client, prompt="Once upon a time", n=3, max_tokens=5, seed=7, ignore_eos=True)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 15


def test_seeded_sampling_is_reproducible(client):
    request = dict(prompt="Once upon a time", temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=10)
    assert complete(client, **request)["choices"] == complete(client, **request)["choices"]


def test_logprobs_come_in_the_completions_format(client):
    body = complete(client, prompt="Once upon a time", temperature=0, max_tokens=5, logprobs=2, ignore_eos=True)
    lp = body["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 5
    assert "".join(lp["tokens"]) == body["choices"][0]["text"]
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert logprob <= 0 and top[token] == logprob  # greedy: the sampled token is the top one
        assert 1 <= len(top) <= 3 and max(top.values()) == logprob


def test_a_stop_string_ends_the_text_before_it(client):
    full = complete(client, prompt="Once upon a time", temperature=0, max_tokens=12, ignore_eos=True)
    text = full["choices"][0]["text"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    body = complete(client, prompt="Once upon a time", temperature=0, max_tokens=12, ignore_eos=True, stop=[stop])
    choice = body["choices"][0]
    assert choice["text"] == text[:text.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop


def test_stop_token_ids_end_the_sequence(client):
    ids = client.post("/tokenize", json={"prompt": PROMPTS[1]}).json()["tokens"]
    first = complete(client, prompt=ids, temperature=0, max_tokens=1)
    first_id = client.post("/tokenize", json={"prompt": first["choices"][0]["text"],
                                              "add_special_tokens": False}).json()["tokens"][0]
    body = complete(client, prompt=ids, temperature=0, max_tokens=10, stop_token_ids=[first_id])
    assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["stop_reason"] == first_id
    assert body["usage"]["completion_tokens"] == 1


@pytest.fixture
def stream_events(client, parse_sse):
    def run(**body) -> list:
        with client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            return parse_sse(r.iter_lines())

    return run


def test_a_stream_sends_one_chunk_per_token_then_done(client, stream_events):
    whole = complete(client, prompt=PROMPTS[2], temperature=0, max_tokens=10, ignore_eos=True)
    events = stream_events(prompt=PROMPTS[2], temperature=0, max_tokens=10, ignore_eos=True)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 10  # single-token deltas, no held-back text, no batching
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 9 + ["length"]
    assert all("usage" not in c for c in chunks)


def test_include_usage_adds_a_final_usage_chunk(stream_events):
    events = stream_events(prompt="Hi", n=2, max_tokens=4, ignore_eos=True,
                           stream_options={"include_usage": True})
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 8
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 8
    assert all(c["usage"] is None for c in chunks)
    finals = sorted(c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"])
    assert finals == [0, 1]


def test_the_openai_client_completes_and_streams(server, offline_llm):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0)
    want = offline_llm.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    extra = {"ignore_eos": True}
    result = client.completions.create(model="tiny-llama", prompt=PROMPTS[0], temperature=0, max_tokens=8,
                                       extra_body=extra)
    assert result.choices[0].text == want.text and result.usage.completion_tokens == 8
    stream = client.completions.create(model="tiny-llama", prompt=PROMPTS[0], temperature=0, max_tokens=8,
                                       stream=True, extra_body=extra)
    assert "".join(c.choices[0].text for c in stream) == want.text
