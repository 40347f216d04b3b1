"""A tensor-parallel worker process: rank r > 0 of the model, driven by the engine's process (rank 0).

    python -m engine.executor.worker --fd N      (started by `MultiprocExecutor`, never by hand)

fd N is this process's end of a private socketpair with the engine (inherited, never bound to an address).
Messages are raw bytes, one kind byte then the body; nothing on the channel is ever unpickled:

    engine -> worker   START + JSON {rank, world, store_port, config}   once
                       STEP + an encoded SchedulerOutput (`codec`)      per step
                       QUIT                                             at shutdown
    worker -> engine   HELLO                                            imports done, joining the group
                       READY + JSON {num_kv_blocks}                     once loaded
                       ERROR + UTF-8 traceback                          before exiting on an exception

The worker exits when told to, when its engine's end of the socketpair closes (the engine process died),
when a collective fails (another rank died), or, as a last resort, when its parent process is gone. It
ignores SIGINT and SIGTERM, which a terminal or a service manager sends to the whole process group: the
engine stops its workers itself, after draining.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection

import torch

from ..config import EngineConfig
from ..distributed.comm import TPComm, connect_store
from ..models.parallel import TPContext
from ..worker.model_runner import ModelRunner
from .codec import decode_step
from .config_codec import config_from_json

START, STEP, QUIT, HELLO, READY, ERROR = b"C", b"S", b"Q", b"H", b"R", b"E"

logger = logging.getLogger(__name__)


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r's device: the CPU for every rank, or the r-th GPU counting from the configured one."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


def start_rank(config: EngineConfig, rank: int, store) -> ModelRunner:
    """Join the group (blocks until every rank has joined, at most the distributed timeout), then load this
    rank's shard and allocate its KV cache."""
    device = rank_device(config.device, rank)
    if device.type == "cuda":  # pragma: no cover - needs several GPUs
        torch.cuda.set_device(device)
    config = dataclasses.replace(config, device=device)
    comm = TPComm(store, rank, config.parallel.tensor_parallel_size, device, config.parallel.distributed_timeout_s)
    return ModelRunner(config, TPContext.for_rank(config.model, comm))


def _exit_with_parent() -> None:
    """Exit if the parent process disappears. Normally the socketpair's EOF or a failed collective ends
    the worker first; this covers a worker busy elsewhere (a NCCL wait does not notice a dead peer)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="kvserve-parent-watch", daemon=True).start()


def serve(conn: Connection, runner: ModelRunner) -> None:
    while True:
        msg = conn.recv_bytes()
        kind = msg[:1]
        if kind == QUIT:
            return
        if kind != STEP:
            raise ValueError(f"unexpected message kind {kind!r} from the engine")
        runner.execute(decode_step(memoryview(msg)[1:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C (and a service manager's SIGTERM) reach every process of the group: the engine decides when its
    # workers stop (after draining), and they exit on their own once it is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(args.fd)
    _exit_with_parent()
    code = 0
    try:
        msg = conn.recv_bytes()
        if msg[:1] != START:
            raise ValueError(f"expected a start message, got kind {msg[:1]!r}")
        spec = json.loads(msg[1:])
        rank, world = int(spec["rank"]), int(spec["world"])
        logging.basicConfig(level=spec.get("log_level", "WARNING"),
                            format=f"%(asctime)s %(levelname)s [tp rank {rank}] %(name)s: %(message)s")
        config = config_from_json(spec["config"])
        conn.send_bytes(HELLO)
        store = connect_store(int(spec["store_port"]), world, config.parallel.distributed_timeout_s)
        runner = start_rank(config, rank, store)
        conn.send_bytes(READY + json.dumps({"num_kv_blocks": runner.num_kv_blocks}).encode())
        serve(conn, runner)
    except (EOFError, ConnectionError):
        code = 0  # the engine went away: nothing to report, nobody to report to
    except BaseException:  # noqa: BLE001 - report anything, then exit without running teardown that may block
        text = traceback.format_exc()
        logger.error("tensor-parallel worker failed:\n%s", text)
        try:
            conn.send_bytes(ERROR + text.encode(errors="replace"))
        except OSError:
            pass
        code = 1
    # os._exit: skip interpreter teardown (destroying a process group whose peers are gone can block)
    os._exit(code)


if __name__ == "__main__":
    main()
