"""`kvserve serve --tensor-parallel-size 2` as a real process: the OpenAI API (streaming included) gives the
same greedy text as one rank and SIGTERM leaves no worker process behind; a killed worker fails the
in-flight stream with an error event, zeroes the gauges and turns /health to 503 without hanging the server;
a hung worker is seen by the step watchdog (/health 503, clients told at once), is killed at the distributed
timeout, and never keeps the process from exiting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from engine import LLM, SamplingParams
from server.process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PROMPT = "The capital of France is"


def worker_pids(parent: int) -> list[int]:
    """Running (not zombie) child processes of `parent` that run the tensor-parallel worker module."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and b"engine.executor.worker" in cmdline:
            pids.append(int(entry.name))
    return pids


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def tp_server(model_dir, *args: str) -> ServerProcess:
    return ServerProcess("--model", str(model_dir), "--num-kv-blocks", "256", "--device", "cpu",
                         "--tensor-parallel-size", "2", "--cpu-threads", "1", *args, threads=1).start(timeout=300)


def gauges(http: httpx.Client, parse_metrics) -> tuple[float, float, float]:
    """Requests running and waiting, KV-cache usage (the one served model's samples)."""
    values = {name: value for (name, _labels), value in parse_metrics(http.get("/metrics").text).items()}
    return tuple(values[f"kvserve:{name}"] for name in
                 ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"))


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


LONG_STREAM = {"prompt": "Tell me a long story.", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
               "stream": True}


def test_two_ranks_serve_the_openai_api_like_one_and_stop_with_the_server(tiny_llama_dir):
    from openai import OpenAI

    want = LLM(str(tiny_llama_dir), num_kv_blocks=256, cpu_threads=1).generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].text
    server = tp_server(tiny_llama_dir)
    try:
        [worker] = worker_pids(server.proc.pid)
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        model = client.models.list().data[0].id
        got = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert got.choices[0].text == want
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=model, prompt=PROMPT, max_tokens=12, temperature=0, stream=True, extra_body={"ignore_eos": True}))
        assert streamed == want
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=5, temperature=0, stream=True)
        assert [c.choices[0].finish_reason for c in chat if c.choices][-1] == "length"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
        assert not running(worker)
    finally:
        server.kill()


def test_a_killed_worker_fails_the_running_stream_and_turns_health_503(tiny_llama_dir, parse_sse, parse_metrics):
    server = tp_server(tiny_llama_dir)
    try:
        [worker] = worker_pids(server.proc.pid)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/completions", json=LONG_STREAM) as r:
                lines = r.iter_lines()
                json.loads(next(lines)[len("data: "):])  # the first token arrived: the request is running
                os.kill(worker, signal.SIGKILL)
                t0 = time.monotonic()
                events = parse_sse(list(lines)[1:])
            assert time.monotonic() - t0 < 30
            *_, error_event, done = events
            assert done == "[DONE]" and error_event["error"]["code"] == "engine_failed"
            health = http.get("/health")
            assert health.status_code == 503 and health.json() == {"status": "failed"}
            refused = http.post("/v1/completions", json={"prompt": "hi"})
            assert refused.status_code == 503
            assert gauges(http, parse_metrics) == (0, 0, 0)  # nothing runs, no KV block counts as used
        server.wait_for("worker rank 1")  # the log names the rank and the cause
        server.wait_for("Released the KV blocks of 1 request(s)")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 1  # the engine had failed: a supervisor should restart it
    finally:
        server.kill()


def test_a_hung_worker_trips_the_watchdog_then_dies_at_the_distributed_timeout(tiny_llama_dir, parse_sse,
                                                                               parse_metrics):
    server = tp_server(tiny_llama_dir, "--step-timeout", "2", "--distributed-timeout", "15")
    try:
        [worker] = worker_pids(server.proc.pid)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/completions", json=LONG_STREAM) as r:
                lines = r.iter_lines()
                json.loads(next(lines)[len("data: "):])
                os.kill(worker, signal.SIGSTOP)  # alive, its sockets open, answering nothing
                t0 = time.monotonic()
                events = parse_sse(list(lines)[1:])
                told_after = time.monotonic() - t0
            *_, error_event, done = events
            assert done == "[DONE]" and error_event["error"]["code"] == "engine_timeout"
            assert told_after < 10  # the step timeout (2 s), not the distributed timeout (15 s)
            health = http.get("/health", timeout=5)
            assert health.status_code == 503 and health.json() == {"status": "failed"}
            assert http.post("/v1/completions", json={"prompt": "hi"}, timeout=5).status_code == 503
            assert gauges(http, parse_metrics) == (0, 0, 0)
            # Rank 0's collective times out: the executor kills the stopped worker, the engine frees its blocks.
            wait_until(lambda: not running(worker), timeout=60)
            server.wait_for("Released the KV blocks of 1 request(s)")
            assert http.get("/health").status_code == 503
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
        server.kill()


def test_with_exit_on_engine_failure_a_hung_worker_ends_the_process_and_leaves_no_worker(tiny_llama_dir):
    # The distributed timeout is far away: the process must exit at the step timeout with rank 0 still
    # blocked in its collective, and take the stopped worker with it.
    server = tp_server(tiny_llama_dir, "--step-timeout", "2", "--distributed-timeout", "600",
                       "--exit-on-engine-failure")
    try:
        [worker] = worker_pids(server.proc.pid)
        os.kill(worker, signal.SIGSTOP)
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_timeout"
        # rank 0's thread is still blocked in its collective: the process stops the workers and skips the
        # interpreter's finalization (where the collective failing under it would abort with SIGABRT)
        server.wait_for("stuck in a step", timeout=60)
        assert server.proc.wait(timeout=60) == 1
        wait_until(lambda: not running(worker), timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
        server.kill()
