"""`kvserve serve --tensor-parallel-size 2` as a real process: the OpenAI API (streaming included) gives the
same greedy text as one rank and SIGTERM leaves no worker process behind; a killed worker fails the
in-flight stream with an error event and turns /health to 503 without hanging the server."""

from __future__ import annotations

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


def tp_server(model_dir) -> ServerProcess:
    return ServerProcess("--model", str(model_dir), "--num-kv-blocks", "256", "--device", "cpu",
                         "--tensor-parallel-size", "2", "--cpu-threads", "1", threads=1).start(timeout=300)


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


def test_a_killed_worker_fails_the_running_stream_and_turns_health_503(tiny_llama_dir, parse_sse):
    server = tp_server(tiny_llama_dir)
    try:
        [worker] = worker_pids(server.proc.pid)
        body = {"prompt": "Tell me a long story.", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
                "stream": True}
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/completions", json=body) as r:
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
        server.wait_for("worker rank 1")  # the log names the rank and the cause
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)
    finally:
        server.kill()
