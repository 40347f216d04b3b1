"""`kvserve serve` as a process: SIGTERM drains (503 for newcomers, in-flight streams finish) and exits 0."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`python -m engine.cli serve ...` with its output read line by line in a thread."""

    def __init__(self, *args: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")  # see conftest.one_torch_thread
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", *args], cwd=REPO_ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line with {text!r}; output so far:\n{''.join(self.output)}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.output.append(line)
            if text in line:
                return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_sigterm_drains_in_flight_streams_and_exits_0(tiny_llama_dir, parse_sse):
    server = ServerProcess("--model", str(tiny_llama_dir), "--port", "0", "--num-kv-blocks", "256",
                           "--api-key", "k", "--shutdown-timeout", "60")
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
    server = ServerProcess("--model", str(tmp_path / "no-such-model"), "--port", "0")
    try:
        server.wait_for("could not be loaded")
        assert server.proc.wait(timeout=60) == 1
    finally:
        server.kill()
