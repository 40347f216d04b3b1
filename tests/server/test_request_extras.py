"""logit_bias, cache_salt, usage.prompt_tokens_details.cached_tokens and chat_template_kwargs over HTTP."""

from __future__ import annotations

import copy
import uuid


def complete(client, **body):
    body.setdefault("temperature", 0)
    return client.post("/v1/completions", json=body)


def test_logit_bias_forces_and_forbids_tokens(client):
    r = complete(client, prompt="Hello there", max_tokens=4, logit_bias={"1234": 100})
    assert r.status_code == 200, r.text
    ids = client.post("/tokenize", json={"prompt": r.json()["choices"][0]["text"], "add_special_tokens": False})
    assert ids.json()["tokens"] == [1234] * 4
    plain = complete(client, prompt="Hello there", max_tokens=1, logprobs=0).json()["choices"][0]
    first = client.post("/tokenize", json={"prompt": plain["text"], "add_special_tokens": False}).json()["tokens"][0]
    banned = complete(client, prompt="Hello there", max_tokens=1, logit_bias={str(first): -100}).json()
    assert banned["choices"][0]["text"] != plain["text"]


def test_bad_logit_bias_is_400_naming_it(client):
    for bias in ({"abc": 1}, {"5": 101}, {"99999999": 1}, {"-3": 1}):
        r = complete(client, prompt="x", max_tokens=1, logit_bias=bias)
        assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", (bias, r.text)


def test_cache_salt_isolates_the_prefix_cache_and_usage_reports_hits(client):
    prompt = f"{uuid.uuid4().hex} " + "the same long shared prefix " * 12
    first = complete(client, prompt=prompt, max_tokens=1, cache_salt="tenant-a").json()["usage"]
    again = complete(client, prompt=prompt, max_tokens=1, cache_salt="tenant-a").json()["usage"]
    other = complete(client, prompt=prompt, max_tokens=1, cache_salt="tenant-b").json()["usage"]
    unsalted = complete(client, prompt=prompt, max_tokens=1).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["prompt_tokens_details"]["cached_tokens"] >= 16  # whole blocks of the same salt
    assert other["prompt_tokens_details"]["cached_tokens"] == 0
    assert unsalted["prompt_tokens_details"]["cached_tokens"] == 0


def test_chat_template_kwargs_reach_the_template(server):
    from server.tokenization import chat_ids

    tok = copy.deepcopy(server.ctx.tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}[{{ flavor | default('none') }}]"
    messages = [{"role": "user", "content": "hi"}]
    assert tok.decode(chat_ids(tok, messages, True, True, {"flavor": "mint"})) == "hi[mint]"
    assert tok.decode(chat_ids(tok, messages, True, True)) == "hi[none]"


def test_chat_template_kwargs_over_http(client):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert client.post("/v1/chat/completions", json={**body, "chat_template_kwargs": {"enable_thinking": False}}
                       ).status_code == 200
    r = client.post("/v1/chat/completions", json={**body, "chat_template_kwargs": {"messages": []}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"
