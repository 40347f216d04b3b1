"""Overload (429 with Retry-After), an engine failure (every in-flight request fails, /health 503), and
the shutdown timeout (requests still running are aborted with an error event)."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

LONG = {"prompt": "Tell me a very long story.", "max_tokens": 480, "ignore_eos": True}


@contextlib.contextmanager
def open_stream(client: httpx.Client, body: dict):
    """An SSE stream whose first event has arrived; yields the iterator of its remaining lines."""
    with client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
        assert r.status_code == 200
        with contextlib.closing(r.iter_lines()) as lines:
            yield lines


def idle(samples: dict) -> bool:
    label = (("model_name", "tiny-llama"),)
    return samples[("kvserve:num_requests_running", label)] == samples[("kvserve:num_requests_waiting", label)] == 0


def test_a_full_queue_answers_429_with_retry_after(live_server, tiny_llama_dir, parse_metrics):
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir, max_num_seqs=1), max_queue=1).start()
    try:
        with live.client() as a, live.client() as b, live.client() as c:
            with open_stream(a, LONG) as first:
                next(first)  # running: the one batch slot is taken
                with open_stream(b, LONG):  # accepted, and waiting for the slot: the queue is full
                    r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
                    assert r.status_code == 429 and r.headers["retry-after"] == "1"
                    error = r.json()["error"]
                    assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
            # The dropped streams are aborted; once the engine is idle, requests are admitted again.
            deadline = time.monotonic() + 30
            while not idle(parse_metrics(c.get("/metrics").text)):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        live.stop()


class FailingStep:
    """Wraps engine.step: raises once two requests are in the engine at the same time."""

    def __init__(self, engine):
        self.engine, self.step = engine, engine.step
        engine.step = self

    def __call__(self):
        if self.engine.num_unfinished_requests >= 2:
            raise RuntimeError("injected failure: a kernel blew up")
        return self.step()


def test_an_engine_failure_fails_every_in_flight_request_and_turns_health_503(live_server, tiny_llama_dir,
                                                                               parse_sse):
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir, hook=lambda e: FailingStep(e).engine)).start()
    try:
        with live.client() as a, live.client() as b:
            with open_stream(a, LONG) as streaming:
                next(streaming)
                # A second request joins the first: the next step raises.
                r = b.post("/v1/completions", json=LONG)
                assert r.status_code == 500
                assert r.json()["error"]["code"] == "engine_failed"
                events = parse_sse(list(streaming)[1:])  # skip the blank line after the first event
            *_, error_event, done = events
            assert done == "[DONE]" and error_event["error"]["code"] == "engine_failed"
            health = httpx.get(live.url + "/health")
            assert health.status_code == 503 and health.json() == {"status": "failed"}
            r = b.post("/v1/completions", json={"prompt": "hi"})
            assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
    finally:
        live.stop()


def test_the_shutdown_timeout_aborts_running_streams_with_an_error_event(live_server, tiny_llama_dir, parse_sse):
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir)).start()
    try:
        with live.client() as a:
            with open_stream(a, dict(LONG, max_tokens=500)) as streaming:
                next(streaming)
                drained = threading.Thread(target=live.call_in_loop, args=(live.ctx.drain(0.1),))
                drained.start()
                events = parse_sse(list(streaming)[1:])
                drained.join()
        *_, error_event, done = events
        assert done == "[DONE]" and error_event["error"]["code"] == "server_shutdown"
        assert httpx.get(live.url + "/health").status_code == 503
    finally:
        live.stop()
