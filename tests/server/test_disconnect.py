"""A client that goes away aborts its request: the engine stops it and frees its KV blocks."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

pytestmark = pytest.mark.timeout(120)

LONG = {"prompt": "Tell me a very long story.", "max_tokens": 480, "ignore_eos": True}
LABEL = (("model_name", "tiny-llama"),)


def poll_metrics(client, parse_metrics, done, timeout: float = 30.0) -> dict:
    """Read /metrics until `done(values)` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        values = {name: v for (name, labels), v in parse_metrics(client.get("/metrics").text).items()
                  if labels in (LABEL, (("finished_reason", "abort"),) + LABEL)}
        if done(values):
            return values
        assert time.monotonic() < deadline, f"/metrics never settled: {values}"
        time.sleep(0.05)


def idle(values) -> bool:
    return (values["kvserve:num_requests_running"] == 0 and values["kvserve:num_requests_waiting"] == 0
            and values["kvserve:kv_cache_usage_perc"] == 0)


def test_dropped_streams_are_aborted_and_free_their_blocks(own_server, parse_metrics):
    with own_server.client() as metrics_client, contextlib.ExitStack() as streams:
        clients = [own_server.client() for _ in range(3)]
        for c in clients:
            response = streams.enter_context(c.stream("POST", "/v1/completions", json=dict(LONG, stream=True)))
            lines = streams.enter_context(contextlib.closing(response.iter_lines()))
            next(lines)  # the first token arrived: the request is running
        running = poll_metrics(metrics_client, parse_metrics, lambda v: v["kvserve:num_requests_running"] > 0)
        assert running["kvserve:kv_cache_usage_perc"] > 0
        for c in clients:
            c.close()  # drop the connections mid-stream
        values = poll_metrics(metrics_client, parse_metrics,
                              lambda v: idle(v) and v["kvserve:request_success_total"] == 3)
        assert values["kvserve:generation_tokens_total"] < 3 * LONG["max_tokens"]


def test_a_dropped_non_streaming_request_is_aborted(own_server, parse_metrics):
    host, port = own_server.url.removeprefix("http://").split(":")
    payload = json.dumps(LONG).encode()
    with own_server.client() as metrics_client:
        before = poll_metrics(metrics_client, parse_metrics, idle)["kvserve:request_success_total"]
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + own_server.api_key.encode() + b"\r\n"
                         b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            poll_metrics(metrics_client, parse_metrics, lambda v: v["kvserve:num_requests_running"] == 1)
        poll_metrics(metrics_client, parse_metrics,
                     lambda v: idle(v) and v["kvserve:request_success_total"] == before + 1)
