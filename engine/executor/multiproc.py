"""Tensor parallelism over N processes: rank 0 in the engine's process, ranks 1..N-1 as worker processes.

    engine process (rank 0)                                     worker processes (ranks 1..N-1)
    Scheduler -> SchedulerOutput -> encode_step ---socketpair---> decode_step -> ModelRunner.execute
                                 -> ModelRunner.execute  <==all-reduce / gather (gloo | NCCL)==>   (forward)
    RunnerOutput <- sample on the gathered logits (rank 0 only)

The scheduler, the block manager and the detokenizer exist once, in the engine; every rank keeps the same
copy of the sequences (`SeqStates`) and so builds the same block tables. Steps travel as bytes over one
private socketpair per worker (an unnamed AF_UNIX pair inherited by the child: no port, no pickle); the
model's activations travel in torch.distributed collectives on 127.0.0.1.

Failure handling: a worker that raises reports its traceback and exits; one that dies closes its sockets,
so rank 0's next collective fails at once; one that hangs makes rank 0's collective time out after
`distributed_timeout`. Any of these makes `execute` raise `WorkerFailure` naming the rank and the cause,
and stops the remaining workers; the engine's `step()` raises it (the server then fails every in-flight
request and turns /health to 503). `shutdown()` asks the workers to quit, then kills stragglers; a
finalizer does the same if the executor is dropped or the interpreter exits, and a worker whose engine
process died exits on its own (EOF on its socketpair), so no path leaves an orphan.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from ..config import EngineConfig
from ..distributed.comm import STARTUP_TIMEOUT_S, create_store
from ..step import RunnerOutput, SchedulerOutput
from ..worker.model_runner import PendingOutput
from .base import WorkerFailure
from .codec import encode_step
from .config_codec import config_to_json
from .worker import ERROR, HELLO, QUIT, READY, START, STEP, start_rank

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory that holds `engine/`


@dataclass(eq=False)
class _Worker:
    rank: int
    proc: subprocess.Popen
    conn: Connection
    error: str | None = None  # the traceback it reported, if any


def _spawn(rank: int, config: EngineConfig, store_port: int) -> _Worker:
    parent_end, child_end = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])])
    if config.device.type == "cpu" and config.cpu_threads is not None:
        env["OMP_NUM_THREADS"] = str(config.cpu_threads)  # before torch starts its thread pool
    try:
        proc = subprocess.Popen([sys.executable, "-m", "engine.executor.worker", "--fd", str(child_end.fileno())],
                                pass_fds=(child_end.fileno(),), env=env)
    finally:
        child_end.close()
    conn = Connection(parent_end.detach())
    spec = {"rank": rank, "world": config.parallel.tensor_parallel_size, "store_port": store_port,
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()), "config": config_to_json(config)}
    conn.send_bytes(START + json.dumps(spec).encode())
    return _Worker(rank, proc, conn)


def _stop(workers: list[_Worker], grace_s: float) -> None:
    """Ask every worker to quit, wait up to `grace_s`, kill what is left, reap everything."""
    for w in workers:
        try:
            w.conn.send_bytes(QUIT)
        except OSError:
            pass
        w.conn.close()  # a worker blocked on its socketpair sees EOF and exits too
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class MultiprocExecutor:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.world = config.parallel.tensor_parallel_size
        self._timeout = config.parallel.distributed_timeout_s
        self._workers: list[_Worker] = []
        self._failure: WorkerFailure | None = None
        self._closed = False
        store = create_store(self.world, self._timeout)
        self._finalizer = weakref.finalize(self, _stop, self._workers, 0.0)
        try:
            for rank in range(1, self.world):
                self._workers.append(_spawn(rank, config, store.port))
            self._await(HELLO, "start")  # every worker has imported torch: joining the group takes seconds
            self.runner = start_rank(config, 0, store)
            self._await(READY, "load its shard")
        except Exception as e:
            failure = self._diagnose(e, "starting")
            self._finalizer()
            raise failure from e
        except BaseException:
            self._finalizer()
            raise
        self.num_kv_blocks = self.runner.num_kv_blocks
        logger.info("Tensor parallelism: %d ranks (worker pids %s)", self.world, self.worker_pids)

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def _await(self, kind: bytes, what: str) -> None:
        """Wait for message `kind` from every worker (EOFError at once if one dies)."""
        deadline = time.monotonic() + max(STARTUP_TIMEOUT_S, self._timeout)
        for w in self._workers:
            if not w.conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"tensor-parallel worker rank {w.rank} did not {what} in time")
            msg = w.conn.recv_bytes()
            if msg[:1] == ERROR:
                w.error = msg[1:].decode(errors="replace")
                raise RuntimeError(f"rank {w.rank} failed to {what}")
            if msg[:1] != kind:
                raise RuntimeError(f"rank {w.rank} sent message kind {msg[:1]!r}, expected {kind!r}")
            if kind == READY and json.loads(msg[1:])["num_kv_blocks"] != self.runner.num_kv_blocks:
                raise RuntimeError(f"rank {w.rank} sized its KV cache differently from rank 0 "
                                   f"({msg[1:].decode()} vs {self.runner.num_kv_blocks} blocks)")

    def execute(self, step: SchedulerOutput) -> RunnerOutput:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise WorkerFailure("the tensor-parallel executor was shut down")
        msg = STEP + encode_step(step)
        try:
            for w in self._workers:
                w.conn.send_bytes(msg)
            return self.runner.execute(step)
        except Exception as e:
            self._failure = self._diagnose(e, "running a step")
            self._finalizer()  # kill the rest: a group with a dead rank cannot run another collective
            raise self._failure from e
        except BaseException:  # KeyboardInterrupt mid-step: the ranks are out of step for good
            self._failure = WorkerFailure("a tensor-parallel step was interrupted; the engine cannot continue")
            self._finalizer()
            raise

    def execute_async(self, step: SchedulerOutput) -> PendingOutput:
        """Tensor parallelism runs synchronously (asynchronous scheduling is off with more than one rank)."""
        return PendingOutput.ready(self.execute(step))

    def _diagnose(self, error: BaseException, doing: str) -> WorkerFailure:
        """Say which rank failed and how: a worker's reported traceback, its exit status, else rank 0's own
        error (a timeout here means a rank stopped answering)."""
        causes = []
        deadline = time.monotonic() + 2.0  # a dying worker's report or exit status can lag its closed sockets
        for w in self._workers:
            if w.error is None:
                try:
                    if w.conn.poll(max(0.0, deadline - time.monotonic())):
                        msg = w.conn.recv_bytes()
                        if msg[:1] == ERROR:
                            w.error = msg[1:].decode(errors="replace")
                except (EOFError, OSError):
                    pass
            try:
                code = w.proc.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                code = None
            if w.error is not None:
                last = w.error.strip().splitlines()[-1] if w.error.strip() else "an error"
                causes.append((1, f"worker rank {w.rank} (pid {w.proc.pid}) raised {last}"))
            elif code is not None:
                causes.append((0, f"worker rank {w.rank} (pid {w.proc.pid}) died ({_describe_exit(code)})"))
        if not causes:
            hint = ""
            if "timed out" in str(error).lower():
                hint = (f" (every worker process is alive: one stopped answering for the distributed timeout of "
                        f"{self._timeout:g} s)")
            return WorkerFailure(f"tensor-parallel rank 0 failed while {doing}: {type(error).__name__}: {error}{hint}")
        causes.sort(key=lambda c: c[0])  # deaths first: a live worker's error is often the echo of a death
        return WorkerFailure(f"tensor-parallel {'; '.join(text for _, text in causes)} while {doing}; "
                             "the engine cannot continue")

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            _stop(self._workers, grace_s=5.0)
            self._finalizer.detach()
