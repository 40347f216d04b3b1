"""`StepWatchdog`: notices an engine step that does not return, which nothing else can see.

A forward pass that hangs (a deadlocked collective, a stuck driver call, an endless loop in a kernel
launch) raises nothing: without a watchdog /health keeps answering "ready", new requests queue behind the
hung step until their clients time out, and only a signal ends it. The watchdog runs on the event loop and
looks at how long the engine thread's current step has been running (`EngineLoop.step_running_for`, a
timestamp the thread writes; no lock, no call into the engine). Past `timeout` seconds it declares the
engine hung: every in-flight request fails with `code: engine_timeout`, and the listener turns /health to
503 so that a supervisor restarts the process (or, with `--exit-on-engine-failure`, the process exits).

vLLM's equivalent is its 60 s engine-iteration timeout; the default here is the same. It must be longer
than the slowest legitimate step: the largest prefill chunk on the slowest device the server runs on.
The watchdog needs the event loop to run, so a hang that holds the GIL (a C extension that never releases
it) stops it too; that is what a liveness probe's own timeout is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .engine_loop import EngineLoop
from .errors import APIError

logger = logging.getLogger(__name__)


class StepWatchdog:
    def __init__(self, engine_loop: EngineLoop, timeout: float):
        assert timeout > 0
        self.engine_loop = engine_loop
        self.timeout = timeout
        self.interval = min(1.0, timeout / 4)  # how late the verdict may come, at most
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            running = self.engine_loop.step_running_for()
            if running is not None and running > self.timeout:
                logger.error("An engine step has been running for %.1f s (limit %.1f s): the engine is hung; "
                             "failing every in-flight request", running, self.timeout)
                self.engine_loop.declare_hung(APIError(
                    500, f"the engine did not finish a step within {self.timeout:g} s and is considered hung; "
                         "the server needs a restart", code="engine_timeout"))
                return
