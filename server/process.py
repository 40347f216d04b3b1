"""`kvserve serve` as a child process: start it on a free loopback port, learn its URL, wait until it is
ready, stop it. Used by tests, benchmarks and scripts that need a real server in its own interpreter."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """`python -m engine.cli serve --port 0 ARGS...`; its output is read line by line in a thread (kept in
    `output`), so a full pipe never blocks the server."""

    def __init__(self, *args: str, threads: int | None = None, env: dict[str, str] | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        """The next output line containing `text` (AssertionError with the output so far on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line with {text!r}; output so far:\n{''.join(self.output)}"
            try:
                line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                assert self.proc.poll() is None, f"the server exited; output:\n{''.join(self.output)}"
                continue
            self.output.append(line)
            if text in line:
                return line

    def start(self, timeout: float = 300) -> "ServerProcess":
        """Wait for the bound URL, then for /health to answer 200."""
        self.url = self.wait_for("serving on ", timeout).split("serving on ")[1].split()[0]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"the server exited; output:\n{''.join(self.output)}"
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (drains in-flight requests), then wait; kill if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
