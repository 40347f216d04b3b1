"""The executor interface the engine steps through, and the error a failed tensor-parallel rank raises."""

from __future__ import annotations

from typing import Protocol

from ..step import RunnerOutput, SchedulerOutput


class WorkerFailure(RuntimeError):
    """A tensor-parallel rank died, raised or stopped answering: the engine cannot continue. The message
    says which rank and why; every later `execute` raises the same error at once."""


class Executor(Protocol):
    num_kv_blocks: int  # the same on every rank

    def execute(self, step: SchedulerOutput) -> RunnerOutput: ...

    def shutdown(self) -> None:
        """Stop every worker process (idempotent)."""
