"""Slow and broken clients: idle connections, slowloris heads, trickled bodies and clients that leave
mid-body are cut by time limits, answered in the envelope where an answer is possible, and never stop the
server from answering everyone else. The server here has 1-second limits so that the tests are quick."""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

HEAD_S = BODY_S = KEEP_ALIVE_S = 1.0


@pytest.fixture(scope="module")
def slow_server(live_server, tiny_llama_dir):
    LiveServer, factory = live_server
    live = LiveServer(factory(tiny_llama_dir), api_key=None, request_head_timeout=HEAD_S,
                      request_body_timeout=BODY_S, keep_alive_timeout=KEEP_ALIVE_S).start()
    yield live
    live.stop()


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def read_until_closed(s: socket.socket, limit: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t0, out = time.monotonic(), b""
    s.settimeout(limit)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out, time.monotonic() - t0
        out += chunk


def envelope(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def served_quickly(server) -> float:
    t0 = time.monotonic()
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10)
    assert r.status_code == 200
    return time.monotonic() - t0


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(slow_server):
    with connect(slow_server) as s:
        raw, waited = read_until_closed(s)
    assert raw == b"" and HEAD_S * 0.9 <= waited < HEAD_S + 3


def test_a_slowloris_head_is_cut_with_a_408_although_bytes_keep_coming(slow_server):
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with connect(slow_server) as s:
        t0 = time.monotonic()
        try:
            for i in range(len(head)):
                s.sendall(head[i:i + 1])
                time.sleep(0.05)
                if time.monotonic() - t0 > HEAD_S + 3:
                    break
        except OSError:  # the server closed the connection while we were still trickling
            pass
        raw, _ = read_until_closed(s)
    assert time.monotonic() - t0 < HEAD_S + 4
    status, error = envelope(raw)
    assert status == 408 and error["code"] == "request_timeout"


def test_a_trickled_body_is_cut_with_a_408(slow_server):
    with connect(slow_server) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": \"")
        raw, waited = read_until_closed(s)
    status, error = envelope(raw)
    assert status == 408 and error["code"] == "request_timeout" and waited < BODY_S + 3


def test_an_idle_keep_alive_connection_is_closed(slow_server):
    with connect(slow_server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        raw, waited = read_until_closed(s)
    assert raw.startswith(b"HTTP/1.1 200") and waited < KEEP_ALIVE_S + 3


def test_many_idle_and_slowloris_connections_do_not_stop_others_from_being_served(slow_server):
    idle = [connect(slow_server) for _ in range(40)]
    loris = [connect(slow_server) for _ in range(40)]
    try:
        for s in loris:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-")
        assert served_quickly(slow_server) < 5
        assert httpx.get(slow_server.url + "/health", timeout=5).status_code == 200
        # ... and every one of them is cut in time.
        for s in idle + loris:
            _, waited = read_until_closed(s)
            assert waited < HEAD_S + 5
    finally:
        for s in idle + loris:
            s.close()


def test_a_client_that_leaves_mid_body_is_logged_without_a_traceback(slow_server, caplog):
    caplog.set_level(logging.INFO)
    with connect(slow_server) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": \"half")
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while not any("disconnected before sending its whole request body" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert served_quickly(slow_server) < 5
