"""The engine thread: the only thread that ever touches the `LLMEngine`.

    event loop (asyncio)                         engine thread
    --------------------                         -------------
    submit(stream, ids, params) --Add-------->   inbox (SimpleQueue) --+
    abort(request_id) ------------Abort------>                         |  applied between steps
    call(fn) -> Future -----------Call------->                         |  (fn(engine), e.g. a cache snapshot)
                                                                       v
    _deliver_acks  <---call_soon_threadsafe---   add_request / abort_request
    _deliver_step  <---call_soon_threadsafe---   step() -> StepOutput (deltas + IterationStats)
    _deliver_failure <-call_soon_threadsafe---   an exception from step()

The thread builds the engine itself (so the model loads while HTTP already answers /health with 503), then
loops: block on the inbox while the engine is idle (no spinning), apply every queued command, run one step,
post its output to the event loop in one call. The event loop routes deltas to per-request
`RequestStream`s; the registry of streams is touched only on the event loop.

A bad request fails alone: an exception from `add_request` rejects that request only. An exception from
`step()` (or `abort_request`) means the engine's state can no longer be trusted: every in-flight request
fails with a 500, the thread aborts what the engine still holds (so its KV blocks go back to the pool, and
the metrics tell the truth) and stops; the listener turns /health to 503.

A step that never returns cannot raise. The thread records when its current step began
(`step_running_for`); `watchdog.StepWatchdog` reads it on the event loop and, past the step timeout, calls
`declare_hung`, which fails every in-flight request the same way. If the step ever returns or raises (under
tensor parallelism a hung worker makes rank 0's collective time out after `--distributed-timeout`), the
thread then aborts what the engine holds, stops, and shuts the engine down (its worker processes too).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.outputs import StepOutput
from engine.sampling_params import ParamError, SamplingParams

from .errors import APIError, unavailable
from .request_stream import RequestStream

logger = logging.getLogger(__name__)


class EngineListener(Protocol):
    """What the engine loop reports to its owner; every call runs on the event loop."""

    def on_ready(self, engine) -> None: ...
    def on_load_failed(self, error: BaseException) -> None: ...
    def on_step(self, output: StepOutput) -> None: ...
    def on_failure(self, error: BaseException) -> None: ...


@dataclass(frozen=True, slots=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival: float
    cache_salt: str | None = None


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable
    future: asyncio.Future


_STOP = object()
ENGINE_FAILED_MESSAGE = "the engine failed while running this request; the server needs a restart"


class EngineLoop:
    def __init__(self, factory: Callable[[], object], loop: asyncio.AbstractEventLoop, listener: EngineListener):
        self._factory = factory
        self._loop = loop
        self._listener = listener
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}  # event-loop side only
        self._lock = threading.Lock()
        self._unapplied = 0  # sequences submitted but not yet handed to the engine
        self._engine_waiting = 0  # sequences in the engine's waiting queue, as of the last step
        self._dead = False
        self._step_started: float | None = None  # monotonic time the running step began (engine thread writes)
        self._added: dict[str, int] = {}  # engine thread only: request id -> its sequences still in the engine
        self._engine = None  # set once loaded: `abandon` reaches its workers from another thread
        self._thread = threading.Thread(target=self._run, name="kvserve-engine", daemon=True)

    # ---- event-loop side ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, stream: RequestStream, prompt_token_ids: list[int], params: SamplingParams,
               cache_salt: str | None = None) -> None:
        """Hand a request to the engine; `stream.accepted` resolves once the engine took it (or refused)."""
        if self._dead:
            raise unavailable("the engine is not running")
        self._streams[stream.request_id] = stream
        with self._lock:
            self._unapplied += params.n
        self._inbox.put(_Add(stream.request_id, prompt_token_ids, params, stream.arrival, cache_salt))

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks; its final (abort) deltas still come back, for the metrics."""
        if not self._dead:
            self._inbox.put(_Abort(request_id))

    def call(self, fn: Callable[[object], object]) -> asyncio.Future:
        """Run `fn(engine)` on the engine thread between two steps (the engine belongs to that thread); the
        future gets its result or exception. Keep `fn` short: the engine waits for it."""
        if self._dead:
            raise unavailable("the engine is not running")
        future = self._loop.create_future()
        self._inbox.put(_Call(fn, future))
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to exit after the commands already queued; wait up to `timeout` seconds."""
        self._inbox.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def num_waiting(self) -> int:
        """Sequences waiting for the engine: submitted but not yet added, plus the engine's waiting queue."""
        with self._lock:
            return self._unapplied + self._engine_waiting

    def in_flight(self) -> list[RequestStream]:
        return list(self._streams.values())

    def step_running_for(self) -> float | None:
        """Seconds the engine's current step has been running; None between steps."""
        started = self._step_started
        return None if started is None else time.monotonic() - started

    @property
    def stuck_in_step(self) -> bool:
        """The engine thread is still inside a step (after `stop` gave up waiting for it)."""
        return self._thread.is_alive() and self._step_started is not None

    def abandon(self) -> None:
        """The process is leaving with the engine thread stuck in a step: stop the engine's worker processes
        from this thread, since the stuck one will never reach its own `engine.shutdown()`."""
        if self._engine is not None:
            self._engine.shutdown()

    def declare_hung(self, error: APIError) -> None:
        """The engine's step will not return in time: fail every in-flight request with `error` now."""
        if self._dead:
            return
        self._dead = True
        self._deliver_failure(RuntimeError(error.message), error)

    # ---- engine thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            engine = self._factory()
        except BaseException as e:  # noqa: BLE001 - any failure to load is reported, never raised into nowhere
            logger.exception("Loading the engine failed")
            self._dead = True
            self._post(self._listener.on_load_failed, e)
            return
        self._engine = engine
        self._post(self._listener.on_ready, engine)
        try:
            self._serve(engine)
        except BaseException as e:  # noqa: BLE001
            if self._dead:  # declared hung, and the step has now raised (a tensor-parallel collective timing out)
                logger.error("The step declared hung ended with %s: %s; releasing what the engine holds",
                             type(e).__name__, e)
            else:
                logger.exception("The engine failed; failing every in-flight request")
                self._dead = True
                self._post(self._deliver_failure, e)
            self._release_all(engine)
        finally:
            engine.shutdown()  # stops tensor-parallel worker processes (nothing to do for one rank)

    def _serve(self, engine) -> None:
        while True:
            commands = self._take(block=not engine.has_unfinished_requests())
            if commands and self._apply(engine, commands):
                return
            if engine.has_unfinished_requests():
                self._step_started = time.monotonic()
                try:
                    out = engine.step()
                finally:
                    self._step_started = None
                if self._dead:  # declared hung while the step ran; its requests have already failed
                    logger.warning("The step declared hung has returned; releasing what the engine holds")
                    self._release_all(engine)
                    return
                self._track(out)
                with self._lock:
                    self._engine_waiting = out.stats.num_waiting
                self._post(self._deliver_step, out)

    def _track(self, out: StepOutput) -> None:
        for delta in out.deltas:
            if delta.finished and delta.request_id in self._added:
                self._added[delta.request_id] -= 1
                if self._added[delta.request_id] <= 0:
                    del self._added[delta.request_id]

    def _release_all(self, engine) -> None:
        """After a failure: abort every request the engine still holds, so that its KV blocks are freed."""
        ids, self._added = list(self._added), {}
        try:
            for request_id in ids:
                engine.abort_request(request_id)
        except Exception:  # noqa: BLE001 - the engine is already broken; say so and leave it
            logger.exception("Aborting the failed engine's requests failed; its KV blocks stay allocated")
            return
        if ids:
            logger.info("Released the KV blocks of %d request(s) of the failed engine", len(ids))

    def _take(self, block: bool) -> list:
        items = [self._inbox.get()] if block else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _apply(self, engine, commands: list) -> bool:
        """Apply queued commands in order; post the add results in one batch. True = stop the loop."""
        acks: list[tuple[str, list[int] | BaseException]] = []
        stop = False
        for cmd in commands:
            if cmd is _STOP:
                stop = True
                break
            if isinstance(cmd, _Abort):
                engine.abort_request(cmd.request_id)
                continue
            if isinstance(cmd, _Call):
                try:
                    self._post(_resolve, cmd.future, cmd.fn(engine), None)
                except Exception as e:  # noqa: BLE001 - the caller gets it; the engine is untouched
                    self._post(_resolve, cmd.future, None, e)
                continue
            try:
                ids = engine.add_request(cmd.request_id, cmd.prompt_token_ids, cmd.params, arrival_time=cmd.arrival,
                                         cache_salt=cmd.cache_salt)
                acks.append((cmd.request_id, ids))
                added = cmd.params.n
                self._added[cmd.request_id] = added
            except Exception as e:  # noqa: BLE001 - one bad request fails alone
                if not isinstance(e, ValueError):
                    logger.exception("add_request failed for %s", cmd.request_id)
                acks.append((cmd.request_id, e))
                added = 0
            with self._lock:
                self._unapplied -= cmd.params.n
                self._engine_waiting += added
        if acks:
            self._post(self._deliver_acks, acks)
        return stop

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: the server is gone, nobody is listening
            pass

    # ---- event-loop callbacks -----------------------------------------------------------------------------
    def _deliver_acks(self, acks: list[tuple[str, list[int] | BaseException]]) -> None:
        for request_id, result in acks:
            stream = self._streams.get(request_id)
            if stream is None:
                continue
            if isinstance(result, BaseException):
                del self._streams[request_id]
                stream.reject(_as_api_error(result))
            else:
                stream.accept(result)

    def _deliver_step(self, out: StepOutput) -> None:
        self._listener.on_step(out)  # metrics first: a client that sees its last token sees it counted
        for delta in out.deltas:
            stream = self._streams.get(delta.request_id)
            if stream is None:
                continue
            stream.put(delta)
            if stream.finished:
                del self._streams[delta.request_id]

    def _deliver_failure(self, error: BaseException, api_error: APIError | None = None) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.fail(api_error or APIError(500, ENGINE_FAILED_MESSAGE, code="engine_failed"))
        self._listener.on_failure(error)


def _resolve(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # the caller gave up waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _as_api_error(e: BaseException) -> APIError | ParamError:
    """Keep ParamError as-is (the endpoint renames its param); anything else becomes an APIError."""
    if isinstance(e, ParamError):
        return e
    if isinstance(e, ValueError):
        return APIError(400, str(e))
    return APIError(500, "the engine could not add this request", code="internal_error")
