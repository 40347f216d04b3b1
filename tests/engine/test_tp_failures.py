"""A tensor-parallel engine fails loudly and cleanly: a worker that dies, raises or hangs makes the next
step raise `WorkerFailure` naming the rank and the cause (never a hang), and no path leaves a worker
process behind: a failure, or the engine's own process ending (normally or killed). `shutdown()` is
checked after every run in test_tp_equivalence.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from engine import LLM, SamplingParams
from engine.executor import WorkerFailure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from engine.models.tiny import save_tiny_llama

    return str(save_tiny_llama(tmp_path_factory.mktemp("tp-fail") / "tiny", vocab_size=512, tokenizer=False))


def start(model_dir: str, tp: int = 2, **kwargs) -> LLM:
    return LLM(model_dir, device="cpu", tensor_parallel_size=tp, num_kv_blocks=64, cpu_threads=1, **kwargs)


def running_engine(llm: LLM):
    engine = llm.engine
    engine.add_request("a", [5, 6, 7, 8], LONG)
    engine.add_request("b", [9, 10], LONG)
    for _ in range(3):
        engine.step()
    return engine


def test_a_killed_worker_fails_the_next_step_at_once_with_its_rank_and_signal(model_dir):
    llm = start(model_dir)
    engine = running_engine(llm)
    [pid] = engine.executor.worker_pids
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(WorkerFailure, match=rf"worker rank 1 \(pid {pid}\) died \(killed by SIGKILL\)"):
        for _ in range(50):
            engine.step()
    assert time.monotonic() - t0 < 10  # a dead peer's sockets close: no waiting for a timeout
    with pytest.raises(WorkerFailure, match="died"):  # and every later step says the same at once
        engine.step()
    with pytest.raises(WorkerFailure):
        llm.generate([[1, 2, 3]], LONG)


def test_a_worker_that_raises_reports_its_exception(model_dir):
    from engine.executor.worker import STEP

    llm = start(model_dir)
    engine = running_engine(llm)
    [worker] = engine.executor._workers
    worker.conn.send_bytes(STEP + b"not a step")  # the worker's decoder raises; it reports and exits
    with pytest.raises(WorkerFailure, match=r"worker rank 1 \(pid \d+\) raised .*DecodeError: malformed step message"):
        engine.step()
    assert wait_gone([worker.proc.pid], 5) == []


def test_a_hung_worker_fails_the_step_after_the_distributed_timeout(model_dir):
    llm = start(model_dir, distributed_timeout=3.0)
    engine = running_engine(llm)
    [pid] = engine.executor.worker_pids
    os.kill(pid, signal.SIGSTOP)  # alive, holding its sockets open, answering nothing
    t0 = time.monotonic()
    try:
        with pytest.raises(WorkerFailure, match="stopped answering for the distributed timeout of 3 s"):
            engine.step()
        assert time.monotonic() - t0 < 30
        assert wait_gone([pid], 5) == []  # the failure killed it
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


SCRIPT = """
import sys, time
from engine import LLM
llm = LLM(sys.argv[1], device="cpu", tensor_parallel_size=2, num_kv_blocks=64, cpu_threads=1)
print("pids", *llm.engine.executor.worker_pids, flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
"""


@pytest.mark.parametrize("ending", ["returns", "killed"])
def test_no_worker_outlives_its_engine_process(model_dir, ending):
    """The engine's process ends without calling shutdown: normally (the exit finalizer stops the workers),
    or by SIGKILL (each worker sees its socketpair close and exits)."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, model_dir, "hang" if ending == "killed" else "return"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pids "), line
        pids = [int(p) for p in line.split()[1:]]
        if ending == "killed":
            assert all(alive(p) for p in pids)
            proc.kill()
        assert proc.wait(60) in (0, -signal.SIGKILL)
        assert wait_gone(pids, 15) == []
    finally:
        proc.kill()
        proc.wait()
