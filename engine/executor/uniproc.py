"""The executor for one rank: the engine's own process runs its `ModelRunner` directly (no copy, no encoding)."""

from __future__ import annotations

from ..config import EngineConfig
from ..step import RunnerOutput, SchedulerOutput
from ..worker.model_runner import ModelRunner, PendingOutput


class InProcessExecutor:
    def __init__(self, config: EngineConfig):
        self.runner = ModelRunner(config)
        self.num_kv_blocks = self.runner.num_kv_blocks

    def execute(self, step: SchedulerOutput) -> RunnerOutput:
        return self.runner.execute(step)

    def execute_async(self, step: SchedulerOutput) -> PendingOutput:
        return self.runner.execute_async(step)

    def shutdown(self) -> None:
        pass
