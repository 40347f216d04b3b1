"""/v1/completions for evaluation clients: a list of prompts in one request, `echo`, `prompt_logprobs`
(and `prompt_logprobs` on chat), over real HTTP against the tiny model; the offline engine is the reference."""

from __future__ import annotations

import math

import pytest

from engine import SamplingParams
from server.response_models import ChatCompletionResponse, CompletionResponse

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    CompletionResponse.model_validate(r.json())  # what the OpenAPI document says a response holds
    return r.json()


def offline(llm, prompts, **params):
    return llm.generate(prompts, SamplingParams(**params))


@pytest.mark.parametrize("shape", ["strings", "token_lists"])
def test_a_list_of_prompts_gives_prompt_major_choices_and_summed_usage(client, offline_llm, shape):
    want = offline(offline_llm, PROMPTS, temperature=0, max_tokens=5, ignore_eos=True)
    prompt = PROMPTS if shape == "strings" else [w.prompt_token_ids for w in want]
    body = complete(client, prompt=prompt, n=2, temperature=0, max_tokens=5, ignore_eos=True)
    assert [c["index"] for c in body["choices"]] == list(range(6))
    for i, w in enumerate(want):
        assert [c["text"] for c in body["choices"][2 * i:2 * i + 2]] == [w.text, w.text]
    num_prompt = sum(len(w.prompt_token_ids) for w in want)
    assert body["usage"]["prompt_tokens"] == num_prompt
    assert body["usage"]["completion_tokens"] == 6 * 5
    assert body["usage"]["total_tokens"] == num_prompt + 30


def test_streamed_list_of_prompts_numbers_choices_prompt_major(server, offline_llm, parse_sse):
    want = offline(offline_llm, PROMPTS[:2], temperature=0, max_tokens=4, ignore_eos=True)
    body = {"prompt": PROMPTS[:2], "n": 2, "temperature": 0, "max_tokens": 4, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with server.client() as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = parse_sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    texts: dict[int, str] = {}
    for e in events[:-2]:
        (choice,) = e["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: want[0].text, 1: want[0].text, 2: want[1].text, 3: want[1].text}
    assert events[-2]["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("prompt, message", [
    ([], "must not be empty"),
    (["a", [1, 2]], "not a mix"),
    ([[1, 2], []], "prompt 1"),
    ([[1, "x"]], "prompt 0"),
    (["a", ""], "prompt[1]: must not be empty"),
    (3, "must be a string"),
    (["x"] * 257, "at most 256 prompts"),
])
def test_bad_prompt_shapes_are_400_naming_prompt(client, prompt, message):
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "prompt" and message in error["message"]


def test_echo_prepends_the_prompt_text_to_every_choice(client, offline_llm):
    want = offline(offline_llm, PROMPTS[:2], temperature=0, max_tokens=3, ignore_eos=True)
    body = complete(client, prompt=PROMPTS[:2], n=2, echo=True, temperature=0, max_tokens=3, ignore_eos=True)
    assert [c["text"] for c in body["choices"]] == [PROMPTS[0] + want[0].text] * 2 + [PROMPTS[1] + want[1].text] * 2


def test_echo_of_token_ids_echoes_their_text(client):
    ids = client.post("/tokenize", json={"prompt": PROMPTS[2]}).json()["tokens"]
    body = complete(client, prompt=ids, echo=True, max_tokens=0)
    assert body["choices"][0]["text"] == PROMPTS[2]


def test_echo_with_logprobs_scores_the_prompt_like_lm_eval_does(client, offline_llm):
    """lm-eval's log-likelihood request: echo, logprobs 1, max_tokens 1 (and vLLM's max_tokens 0)."""
    prompt = PROMPTS[0]
    ref = offline(offline_llm, [prompt], temperature=0, max_tokens=1, prompt_logprobs=1)[0]
    for max_tokens in (0, 1):
        body = complete(client, prompt=prompt, echo=True, logprobs=1, max_tokens=max_tokens, temperature=0)
        (choice,) = body["choices"]
        lps = choice["logprobs"]
        n = len(ref.prompt_token_ids)
        assert len(lps["tokens"]) == n + max_tokens
        assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
        for pos in range(1, n):
            assert math.isclose(lps["token_logprobs"][pos], ref.prompt_logprobs[pos].logprob, abs_tol=1e-5)
            assert len(lps["top_logprobs"][pos]) in (1, 2)  # the top alternative, plus the token if it differs
        assert "".join(lps["tokens"][:n]) == prompt
        assert lps["text_offset"][:n] == [len("".join(lps["tokens"][:i])) for i in range(n)]
        assert choice["text"].startswith(prompt) and len(choice["text"]) >= len(prompt)
        assert body["usage"]["completion_tokens"] == max_tokens
        assert choice["finish_reason"] == "length"


def test_streamed_echo_sends_the_prompt_in_the_first_chunk(server, parse_sse):
    body = {"prompt": PROMPTS[1], "echo": True, "logprobs": 0, "max_tokens": 3, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with server.client() as c, c.stream("POST", "/v1/completions", json=body) as r:
        events = parse_sse(r.iter_lines())
    first = events[0]["choices"][0]
    assert first["text"].startswith(PROMPTS[1])
    assert first["logprobs"]["token_logprobs"][0] is None
    whole = complete(server.client(), **{k: v for k, v in body.items() if k != "stream"})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == whole["choices"][0]["text"]


def test_prompt_logprobs_field_in_vllm_format_matches_the_engine(client, offline_llm):
    ref = offline(offline_llm, [PROMPTS[2]], temperature=0, max_tokens=2, prompt_logprobs=2)[0]
    body = complete(client, prompt=PROMPTS[2], prompt_logprobs=2, temperature=0, max_tokens=2)
    got = body["choices"][0]["prompt_logprobs"]
    assert got[0] is None and len(got) == len(ref.prompt_token_ids)
    for pos in range(1, len(got)):
        entry, want = got[pos], ref.prompt_logprobs[pos]
        me = entry[str(want.token_id)]
        assert math.isclose(me["logprob"], want.logprob, abs_tol=1e-5) and me["rank"] == want.rank
        assert {int(t) for t in entry} == {want.token_id, *want.top}
        assert [entry[str(t)]["rank"] for t in want.top if t != want.token_id] == \
            [r for r, t in enumerate(want.top, start=1) if t != want.token_id]


def test_prompt_logprobs_on_chat_come_once_at_the_top(client):
    messages = [{"role": "user", "content": "Hi"}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "prompt_logprobs": 0, "max_tokens": 2, "n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    ChatCompletionResponse.model_validate(body)
    ids = client.post("/tokenize", json={"messages": messages}).json()["tokens"]
    assert len(body["prompt_logprobs"]) == len(ids) and body["prompt_logprobs"][0] is None
    assert all(set(e) == {str(t)} for e, t in zip(body["prompt_logprobs"][1:], ids[1:]))


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "x", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 1, "stream": True},
     "prompt_logprobs"),
    ("/v1/completions", {"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "echo": "yes"}, "echo"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo"),
])
def test_misused_fields_are_400_naming_them(client, path, body, param):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
