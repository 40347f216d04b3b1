"""The Ray-free parts of replicas on Ray Serve: routing keys, the ASGI bridge, merged metrics, the replica
directory and the flags. The deployment itself is tested end to end in tests/ray/."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from server.cli import add_arguments
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.metrics_merge import merge_expositions
from server.ray_bridge import REPLICA_HEADER, ForwardedRequest, call_app, routing_key
from server.ray_config import POW2_ROUTER, PREFIX_AFFINITY_ROUTER, RayServeConfig
from server.ray_directory import ReplicaDirectory, ReplicaEntry
from server.ray_ingress import ReplicaFailed, build_ingress_app


# ---- routing keys -------------------------------------------------------------------------------------------

def test_a_text_prompt_is_its_own_routing_key():
    body = json.dumps({"model": "m", "prompt": "You are a helpful assistant. Hi"}).encode()
    assert routing_key("POST", "/v1/completions", body) == "You are a helpful assistant. Hi"


def test_token_ids_become_one_character_each_so_a_shared_token_prefix_is_a_shared_string_prefix():
    a = routing_key("POST", "/v1/completions", json.dumps({"prompt": [1, 2, 3, 4]}).encode())
    b = routing_key("POST", "/v1/completions", json.dumps({"prompt": [1, 2, 3, 9, 9]}).encode())
    assert len(a) == 4 and len(b) == 5 and a[:3] == b[:3] and a[3] != b[3]


def test_several_prompts_are_keyed_by_the_first():
    texts = routing_key("POST", "/v1/completions", json.dumps({"prompt": ["Q: 1+1?", "Q: 2+2?"]}).encode())
    ids = routing_key("POST", "/v1/completions", json.dumps({"prompt": [[1, 2, 3], [4]]}).encode())
    assert texts == "Q: 1+1?" and ids == routing_key("POST", "/v1/completions", b'{"prompt": [1, 2, 3]}')


def test_a_chat_is_keyed_by_its_messages_in_order():
    body = json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}).encode()
    assert routing_key("POST", "/v1/chat/completions", body) == "system:Be brief.\nuser:Hi\n"


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/health", b""),
    ("POST", "/v1/completions", b"not json"),
    ("POST", "/v1/completions", b"[1, 2]"),
    ("POST", "/v1/completions", json.dumps({"prompt": [-1, 5]}).encode()),
    ("POST", "/v1/completions", json.dumps({"prompt": ""}).encode()),
    ("POST", "/tokenize", json.dumps({"prompt": "hello"}).encode()),
])
def test_everything_else_is_keyed_by_method_and_path_never_by_an_empty_string(method, path, body):
    # Ray's router divides by the key's length: it must never be empty.
    assert routing_key(method, path, body) == f"{method} {path}"


# ---- the bridge ---------------------------------------------------------------------------------------------

def _request(path: str, body: bytes = b"", method: str = "POST") -> ForwardedRequest:
    scope = {"method": method, "path": path, "query_string": b"a=1", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5000)}
    return ForwardedRequest.from_scope(scope, body)


def _collect(app, request, extra=()):
    async def go():
        return [m async for m in call_app(app, request, list(extra))]
    return asyncio.run(go())


def test_the_app_sees_the_forwarded_request_and_its_answer_comes_back_with_the_replica_header():
    async def echo(request):
        return JSONResponse({"path": request.url.path, "query": request.url.query,
                             "body": (await request.body()).decode(), "client": request.client.host})

    app = Starlette(routes=[Route("/v1/completions", echo, methods=["POST"])])
    messages = _collect(app, _request("/v1/completions", b'{"prompt": "x"}'), [(REPLICA_HEADER, b"r1")])
    start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
    assert start["status"] == 200 and (REPLICA_HEADER, b"r1") in [tuple(h) for h in start["headers"]]
    assert json.loads(body) == {"path": "/v1/completions", "query": "a=1", "body": '{"prompt": "x"}',
                                "client": "127.0.0.1"}


def test_a_consumer_that_stops_early_makes_the_app_see_a_disconnect():
    seen = asyncio.Event()

    async def endless(request):
        async def frames():
            try:
                while True:
                    yield b"data: x\n\n"
                    await asyncio.sleep(0.01)
            finally:
                seen.set()
        return StreamingResponse(frames(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/s", endless, methods=["POST"])])

    async def go():
        gen = call_app(app, _request("/s"))
        async for message in gen:
            if message.get("body"):
                break
        await gen.aclose()
        return seen.is_set()

    assert asyncio.run(go())


def test_an_app_that_raises_before_answering_becomes_a_500_in_the_openai_envelope():
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    messages = _collect(broken, _request("/x"))
    assert messages[0]["status"] == 500
    assert json.loads(messages[1]["body"])["error"]["code"] == "internal_error"


# ---- the ingress's failure handling ---------------------------------------------------------------------------

def _ingress_answer(forward, path="/v1/completions", api_key=None, headers=()):
    async def list_replicas():
        return []

    app = build_ingress_app(forward, list_replicas, ServerConfig(api_key=api_key))
    sent = []

    async def go():
        body_sent = False

        async def receive():
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"{}", "more_body": False}
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        await app({"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": list(headers),
                   "client": ("127.0.0.1", 1)}, receive, send)
    asyncio.run(go())
    return sent


def test_a_replica_that_dies_before_answering_gives_a_503_replica_failed():
    async def forward(request):
        raise ReplicaFailed("ActorDiedError")
        yield  # pragma: no cover

    sent = _ingress_answer(forward)
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"]["code"] == "replica_failed"


def test_a_replica_that_dies_mid_stream_ends_the_stream_with_an_error_event_and_done():
    async def forward(request):
        yield {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
        yield {"type": "http.response.body", "body": b"data: {\"x\": 1}\n\n", "more_body": True}
        raise ReplicaFailed("ActorDiedError")

    sent = _ingress_answer(forward)
    last = sent[-1]
    assert last["more_body"] is False
    frames = last["body"].decode().split("\n\n")
    assert json.loads(frames[0].removeprefix("data: "))["error"]["code"] == "replica_failed"
    assert frames[1] == "data: [DONE]"


def test_the_ingress_checks_the_api_key_before_forwarding_anything():
    forwarded = []

    async def forward(request):
        forwarded.append(request)
        yield {}  # pragma: no cover

    sent = _ingress_answer(forward, api_key="k")
    assert sent[0]["status"] == 401 and not forwarded


# ---- merged metrics -------------------------------------------------------------------------------------------

def test_merged_metrics_label_every_sample_with_its_replica_and_keep_the_families_whole():
    a, b = ServerMetrics("m", 1024), ServerMetrics("m", 1024)
    a.prompt_tokens.inc(5)
    b.prompt_tokens.inc(7)
    a.time_to_first_token.observe(0.3)
    merged = merge_expositions({"r1": a.render().decode(), "r2": b.render().decode()}).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    prompt = {s.labels["replica"]: s.value for s in families["kvserve:prompt_tokens"].samples}
    assert prompt == {"r1": 5.0, "r2": 7.0}
    assert families["kvserve:time_to_first_token_seconds"].type == "histogram"
    assert merged.count("# TYPE kvserve:prompt_tokens_total counter") == 1


def test_merging_refuses_an_exposition_that_already_has_a_replica_label():
    with pytest.raises(ValueError, match="replica r1"):
        merge_expositions({"r1": 'x_total{replica="a"} 1\n'})


# ---- the replica directory ------------------------------------------------------------------------------------

def test_a_replica_that_stops_beating_leaves_the_directory_by_itself(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("server.ray_directory.time.monotonic", lambda: clock[0])
    directory = ReplicaDirectory(ttl_s=6.0)
    a, b = (ReplicaEntry(r, "127.0.0.1", f"http://127.0.0.1:{p}/metrics", p) for r, p in (("a", 1), ("b", 2)))
    directory.heartbeat(a)
    directory.heartbeat(b)
    clock[0] += 5
    directory.heartbeat(b)
    assert directory.live() == [a, b]
    clock[0] += 2
    assert directory.live() == [b]
    assert b.target == "127.0.0.1:2"


# ---- flags ----------------------------------------------------------------------------------------------------

def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_replicas_there_is_no_ray_config_and_a_ray_flag_alone_is_an_error():
    assert RayServeConfig.from_cli_args(_parse()) is None
    with pytest.raises(ValueError, match="--router: .*--replicas"):
        RayServeConfig.from_cli_args(_parse("--router", "pow2"))


def test_replica_flags_become_serves_options():
    cfg = RayServeConfig.from_cli_args(_parse("--replicas", "2", "--min-replicas", "1", "--max-replicas", "4",
                                              "--target-ongoing-requests", "8", "--router", "pow2"))
    assert cfg.autoscaling_config() == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                        "target_ongoing_requests": 8.0}
    assert cfg.router_class == POW2_ROUTER
    fixed = RayServeConfig.from_cli_args(_parse("--replicas", "3"))
    assert fixed.autoscaling_config() is None and fixed.router_class == PREFIX_AFFINITY_ROUTER


def test_the_prefix_router_evicts_old_prompts_and_takes_the_imbalance_threshold():
    assert RayServeConfig().router_kwargs() == {"do_eviction": True, "imbalanced_threshold": 20.0}
    assert RayServeConfig(prefix_imbalance_threshold=8).router_kwargs() == {"do_eviction": True,
                                                                           "imbalanced_threshold": 8}
    never = RayServeConfig.from_cli_args(_parse("--replicas", "2", "--prefix-imbalance-threshold", "inf"))
    assert never.router_kwargs()["imbalanced_threshold"] == float("inf")  # Ray's own default
    assert RayServeConfig(router="pow2").router_kwargs() == {}


@pytest.mark.parametrize("kwargs, param", [
    (dict(router="pow2", prefix_imbalance_threshold=4), "prefix_imbalance_threshold"),
    (dict(replicas=0), "replicas"),
    (dict(min_replicas=1), "min_replicas"),
    (dict(replicas=5, min_replicas=1, max_replicas=4), "replicas"),
    (dict(min_replicas=3, max_replicas=2, replicas=2), "min_replicas"),
    (dict(target_ongoing_requests=0), "target_ongoing_requests"),
    (dict(max_ongoing_requests=0), "max_ongoing_requests"),
    (dict(router="random"), "router"),
    (dict(replica_metrics_port=70000), "replica_metrics_port"),
])
def test_bad_replica_settings_are_refused_naming_the_parameter(kwargs, param):
    with pytest.raises(ValueError, match=f"^{param}"):
        RayServeConfig(**kwargs)
