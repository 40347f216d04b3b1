"""/health, /v1/models, /tokenize, /detokenize, /metrics access, and unknown routes."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)


def test_health_is_open_and_200_when_ready(server):
    r = httpx.get(server.url + "/health")  # no API key
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_models_lists_the_served_model(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "tiny-llama" and model["object"] == "model" and model["max_model_len"] == 512


def test_tokenize_then_detokenize_round_trips(client):
    text = "Paged attention, in one sentence."
    tok = client.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert tok["count"] == len(tok["tokens"]) == len(tok["token_strs"]) and tok["max_model_len"] == 512
    assert client.post("/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": text}


def test_metrics_need_the_api_key_and_carry_the_model_label(server, client, parse_metrics):
    assert httpx.get(server.url + "/metrics").status_code == 401
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = parse_metrics(r.text)
    assert samples and all(dict(labels).get("model_name") == "tiny-llama" for _, labels in samples)
    assert not any(name.endswith("_created") for name, _ in samples)


def test_unknown_route_and_wrong_method_use_the_error_envelope(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = client.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_health_is_503_while_the_model_loads(live_server, tiny_llama_dir):
    import threading

    LiveServer, factory = live_server
    release = threading.Event()
    build = factory(tiny_llama_dir)

    def slow_build():
        release.wait(60)
        return build()

    live = LiveServer(slow_build).start(wait_until_loaded=False)
    try:
        with live.client() as client:
            r = client.get("/health")
            assert r.status_code == 503 and r.json() == {"status": "loading"}
            r = client.post("/v1/completions", json={"prompt": "hi"})
            assert r.status_code == 503 and r.json()["error"]["message"] == "the model is still loading"
            release.set()
            assert live.ctx.ready.wait(60)
            assert client.get("/health").status_code == 200
    finally:
        release.set()
        live.stop()
