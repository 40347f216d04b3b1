"""Bad input: each case gets the right status, the OpenAI error envelope and the offending `param`, never a
5xx, and the server stays healthy. Limits of the shared server: 64 KiB bodies, a 512-token context."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

C, CHAT = "/v1/completions", "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields) -> dict:
    return dict({"prompt": "hi", "max_tokens": 4}, **fields)


# (id, path, json body or raw bytes, status, param)
CASES = [
    ("invalid-json", C, b'{"prompt": "hi",', 400, None),
    ("array-body", C, b'["hi"]', 400, None),
    ("empty-body", C, b"", 400, None),
    ("nan-literal", C, b'{"prompt": "hi", "temperature": NaN}', 400, None),
    ("infinity-literal", C, b'{"prompt": "hi", "top_p": Infinity}', 400, None),
    ("overflowing-number", C, b'{"prompt": "hi", "temperature": 1e999}', 400, None),
    ("prompt-missing", C, {"max_tokens": 4}, 400, "prompt"),
    ("prompt-wrong-type", C, body(prompt=5), 400, "prompt"),
    ("prompt-empty", C, body(prompt=""), 400, "prompt"),
    ("prompt-empty-list", C, body(prompt=[]), 400, "prompt"),
    ("prompt-batch-mixed", C, body(prompt=["a", [1, 2]]), 400, "prompt"),
    ("token-id-out-of-vocab", C, body(prompt=[1, 49152]), 400, "prompt"),
    ("token-id-negative", C, body(prompt=[1, -3]), 400, "prompt"),
    ("prompt-over-context", C, body(prompt=[7] * 600), 400, "prompt"),
    ("max-tokens-over-context", C, body(prompt=[7] * 100, max_tokens=500), 400, "max_tokens"),
    ("temperature-negative", C, body(temperature=-0.5), 400, "temperature"),
    ("temperature-string", C, body(temperature="hot"), 400, "temperature"),
    ("max-tokens-zero", C, body(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-float", C, body(max_tokens=1.5), 400, "max_tokens"),
    ("n-huge", C, body(n=100000), 400, "n"),
    ("n-bool", C, body(n=True), 400, "n"),
    ("stop-list-huge", C, body(stop=["x"] * 1000), 400, "stop"),
    ("stop-wrong-type", C, body(stop=123), 400, "stop"),
    ("stop-token-id-out-of-vocab", C, body(stop_token_ids=[10**6], min_tokens=2), 400, "stop_token_ids"),
    ("stop-token-id-beyond-int64", C, body(stop_token_ids=[2**70], min_tokens=2), 400, "stop_token_ids"),
    ("top-p-zero", C, body(top_p=0), 400, "top_p"),
    ("top-k-below-minus-one", C, body(top_k=-5), 400, "top_k"),
    ("min-p-above-one", C, body(min_p=1.5), 400, "min_p"),
    ("frequency-penalty-range", C, body(frequency_penalty=3), 400, "frequency_penalty"),
    ("repetition-penalty-zero", C, body(repetition_penalty=0), 400, "repetition_penalty"),
    ("min-tokens-over-max", C, body(min_tokens=10, max_tokens=4), 400, "min_tokens"),
    ("logprobs-too-many", C, body(logprobs=21), 400, "logprobs"),
    ("seed-string", C, body(seed="42"), 400, "seed"),
    ("stream-not-bool", C, body(stream="yes"), 400, "stream"),
    ("echo-unsupported-on-chat", CHAT, {"messages": OK_MESSAGES, "echo": True}, 400, "echo"),
    ("logit-bias-out-of-range", C, body(logit_bias={"50": 101.0}), 400, "logit_bias"),
    ("unknown-model", C, body(model="gpt-9"), 404, "model"),
    ("messages-missing", CHAT, {"max_tokens": 4}, 400, "messages"),
    ("messages-empty", CHAT, {"messages": []}, 400, "messages"),
    ("messages-too-many", CHAT, {"messages": OK_MESSAGES * 600}, 400, "messages"),
    ("bad-role", CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ("content-wrong-type", CHAT, {"messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content"),
    ("image-content", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages[0].content"),
    ("chat-over-context", CHAT, {"messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages"),
    ("top-logprobs-too-many", CHAT, {"messages": OK_MESSAGES, "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs"),
    ("top-logprobs-without-logprobs", CHAT, {"messages": OK_MESSAGES, "top_logprobs": 2}, 400, "top_logprobs"),
    ("max-completion-tokens-zero", CHAT, {"messages": OK_MESSAGES, "max_completion_tokens": 0}, 400,
     "max_completion_tokens"),
    ("tool-without-function", CHAT, {"messages": OK_MESSAGES, "tools": [{"type": "function"}]}, 400,
     "tools[0].function"),
    ("detokenize-out-of-vocab", "/detokenize", {"tokens": [1, 10**9]}, 400, "tokens"),
]


def post(client: httpx.Client, path: str, payload) -> httpx.Response:
    if isinstance(payload, bytes):
        return client.post(path, content=payload, headers={"Content-Type": "application/json"})
    return client.post(path, json=payload)


def assert_envelope(r: httpx.Response, status: int, param: str | None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert 0 < len(error["message"]) <= 512
    return error


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_client_error_naming_the_param(client, case):
    _, path, payload, status, param = case
    error = assert_envelope(post(client, path, payload), status, param)
    if param is not None:
        assert error["message"].startswith(param)


def test_context_errors_state_both_numbers(client):
    error = post(client, C, body(prompt=[7] * 100, max_tokens=500)).json()["error"]
    assert "100" in error["message"] and "500" in error["message"] and "512" in error["message"]
    error = post(client, C, body(prompt=[7] * 600)).json()["error"]
    assert "600" in error["message"] and "512" in error["message"]


def test_error_messages_never_echo_huge_inputs(client):
    error = assert_envelope(post(client, C, body(model="m" * 20000)), 404, "model")
    assert len(error["message"]) < 600


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic test-key"},
                                     {"Authorization": "Bearer"}], ids=["missing", "wrong", "not-bearer", "no-token"])
def test_a_missing_or_wrong_api_key_is_401(server, headers):
    r = httpx.post(server.url + C, json=body(), headers=headers)
    error = assert_envelope(r, 401, None)
    assert error["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"


def test_a_body_over_the_limit_is_413(client):
    assert_envelope(post(client, C, body(prompt="x" * 70_000)), 413, None)


def test_a_chunked_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    r = client.post(C, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_envelope(r, 413, None)


def test_a_top_k_beyond_the_vocabulary_means_no_limit(client):
    r = client.post(C, json=body(top_k=2**70, temperature=1.0))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_the_server_is_healthy_and_serving_after_all_that(server, client):
    assert httpx.get(server.url + "/health").status_code == 200
    r = client.post(C, json=body())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
