"""Executors: how the engine runs a step on its model runner(s).

    executor.execute(SchedulerOutput) -> RunnerOutput

`InProcessExecutor` calls one `ModelRunner` in the engine's own process (tensor_parallel_size 1, today's
path). `MultiprocExecutor` runs tensor-parallel ranks: rank 0 in the engine's process, ranks 1..N-1 as
worker processes (`engine.executor.worker`) that receive each step as bytes (`codec`) over a private
socketpair, and whose forward passes meet rank 0's in torch.distributed collectives.
"""

from __future__ import annotations

from ..config import EngineConfig
from .base import Executor, WorkerFailure


def build_executor(config: EngineConfig) -> Executor:
    if config.parallel.tensor_parallel_size == 1:
        from .uniproc import InProcessExecutor

        return InProcessExecutor(config)
    from .multiproc import MultiprocExecutor

    return MultiprocExecutor(config)


__all__ = ["Executor", "WorkerFailure", "build_executor"]
