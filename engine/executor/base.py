"""The executor interface the engine steps through, and the error a failed tensor-parallel rank raises."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..step import RunnerOutput, SchedulerOutput

if TYPE_CHECKING:
    from ..worker.model_runner import ModelRunner, PendingOutput


class WorkerFailure(RuntimeError):
    """A tensor-parallel rank died, raised or stopped answering: the engine cannot continue. The message
    says which rank and why; every later `execute` raises the same error at once."""


class Executor(Protocol):
    num_kv_blocks: int  # the same on every rank
    runner: ModelRunner  # the runner in the engine's own process (rank 0's)

    def execute(self, step: SchedulerOutput) -> RunnerOutput: ...

    def execute_async(self, step: SchedulerOutput) -> PendingOutput:
        """Queue the step and return at once; `result()` waits for its tokens."""

    def shutdown(self) -> None:
        """Stop every worker process (idempotent)."""
