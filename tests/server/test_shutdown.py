"""`kvserve serve` as a process: SIGTERM drains (503 for newcomers, in-flight streams finish) and exits 0."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from server.process import ServerProcess

pytestmark = pytest.mark.timeout(180)


def test_sigterm_drains_in_flight_streams_and_exits_0(tiny_llama_dir, parse_sse):
    server = ServerProcess("--model", str(tiny_llama_dir), "--num-kv-blocks", "256",
                           "--api-key", "k", "--shutdown-timeout", "60", threads=1)
    try:
        url = server.wait_for("serving on").split("serving on ")[1].split()[0]
        server.wait_for("-> ready")
        headers = {"Authorization": "Bearer k"}
        body = {"prompt": "Tell me a long story.", "max_tokens": 300, "temperature": 0, "ignore_eos": True,
                "stream": True}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            with client.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                first = json.loads(next(lines)[len("data: "):])
                server.proc.send_signal(signal.SIGTERM)
                server.wait_for("Draining")
                assert httpx.get(url + "/health").status_code == 503
                refused = client.post("/v1/completions", json={"prompt": "hi"})
                assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
                rest = parse_sse(list(lines)[1:])
        assert rest[-1] == "[DONE]"
        chunks = [first] + rest[:-1]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert server.proc.wait(timeout=60) == 0
    finally:
        server.kill()


def test_a_model_that_cannot_load_makes_the_process_exit_1(tmp_path):
    server = ServerProcess("--model", str(tmp_path / "no-such-model"), threads=1)
    try:
        server.wait_for("could not be loaded")
        assert server.proc.wait(timeout=60) == 1
    finally:
        server.kill()
