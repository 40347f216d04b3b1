"""POST /v1/chat/completions: the chat template, message/delta shapes, chat logprobs, the openai client."""

from __future__ import annotations

import pytest

from engine import SamplingParams

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def templated_ids(offline_llm):
    """The prompt the server must build: the tokenizer's chat template with the generation prompt."""
    tok = offline_llm.tokenizer
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def chat(client, **body) -> dict:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_greedy_chat_matches_offline_generate_on_the_templated_prompt(client, offline_llm, templated_ids):
    want = offline_llm.generate([templated_ids], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0]
    body = chat(client, messages=MESSAGES, temperature=0, max_tokens=10, ignore_eos=True)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": want.text}
    assert choice["finish_reason"] == "length"
    assert dict(body["usage"], prompt_tokens_details=None) == {"prompt_tokens_details": None, "prompt_tokens": len(templated_ids), "completion_tokens": 10,
                             "total_tokens": len(templated_ids) + 10}


def test_tokenize_with_messages_applies_the_same_template(client, templated_ids):
    body = client.post("/tokenize", json={"messages": MESSAGES}).json()
    assert body["tokens"] == templated_ids and body["count"] == len(templated_ids)


def test_max_completion_tokens_is_the_limit(client):
    body = chat(client, messages=MESSAGES, max_completion_tokens=3, max_tokens=50, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 3


def test_text_content_parts_are_joined(client):
    parts = [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]
    a = chat(client, messages=[MESSAGES[0], {"role": "user", "content": parts}], temperature=0, max_tokens=5)
    b = chat(client, messages=MESSAGES, temperature=0, max_tokens=5)
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]


def test_chat_logprobs_come_in_the_chat_format(client):
    body = chat(client, messages=MESSAGES, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3,
                ignore_eos=True)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    assert "".join(e["token"] for e in content) == body["choices"][0]["message"]["content"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode())
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == entry["token"] and tops[0]["logprob"] == entry["logprob"]
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)


def test_a_chat_stream_starts_with_the_role_and_ends_with_usage(client, parse_sse):
    whole = chat(client, messages=MESSAGES, temperature=0, max_tokens=6, ignore_eos=True)
    request = dict(messages=MESSAGES, temperature=0, max_tokens=6, ignore_eos=True, stream=True,
                   stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=request) as r:
        events = parse_sse(r.iter_lines())
    role, *chunks, usage, done = events
    assert done == "[DONE]"
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_the_openai_client_chats_and_streams(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0)
    result = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, temperature=0,
                                            max_completion_tokens=6, extra_body={"ignore_eos": True})
    assert result.choices[0].message.role == "assistant" and result.usage.completion_tokens == 6
    stream = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, temperature=0,
                                            max_completion_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == result.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6
