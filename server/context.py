"""`ServerContext`: everything one server owns, passed explicitly to the routes (no module globals).

It holds the server's phase (the truth behind /health), the engine loop and the watchdog of its steps,
the server's own tokenizers (copies of the engine's, so both always agree) in their worker threads
(tokenization and chat templating never run on the event loop; see `tokenizer_lanes`), a small pool for
other CPU work (parsing and serializing large bodies), the metrics, and the count of in-flight generation
requests that a graceful shutdown waits for.

    LOADING --engine built--> READY --SIGTERM--> DRAINING --(idle or timeout)--> process exits
       |                        |                    |
       +--load failed--> FAILED <--engine failure----+   (a step raised, or ran past --step-timeout)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pydantic import BaseModel

from engine.outputs import StepOutput
from engine.roofline import Peak
from engine.tools.peaks import PeakArgs, peak_for

from .chat_template import ChatSetup, chat_setup
from .config import ServerConfig
from .engine_loop import EngineLoop
from .errors import APIError, bad_request, unavailable
from .metrics import ServerMetrics
from .parsing import parse_request
from .recent import RecentActivity
from .request_stream import RequestStream
from .stat_logger import StatLogger
from .tokenizer_lanes import TokenizerLanes
from .watchdog import StepWatchdog

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
INLINE_PARSE_BYTES = 64 * 1024


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Ticket:
    """One admitted generation request; `release()` (idempotent) when its response is over."""

    def __init__(self, ctx: "ServerContext"):
        self._ctx = ctx
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._ctx._release()


class QueueSlots:
    """Places in the waiting queue held for a request's sequences from its admission until they are handed
    to the engine loop (which counts them from then on); `release()` is idempotent."""

    def __init__(self, ctx: "ServerContext", num_seqs: int):
        self._ctx = ctx
        self.num_seqs = num_seqs

    def release(self) -> None:
        if self.num_seqs:
            self._ctx._reserved -= self.num_seqs
            self.num_seqs = 0


class ServerContext:
    def __init__(self, config: ServerConfig, engine_factory: Callable[[], object], peak_args: PeakArgs | None = None):
        self.config = config
        self.peak_args = peak_args or PeakArgs()  # what utilization is measured against (resolved on load)
        self.peak: Peak | None = None
        self.phase = Phase.LOADING
        self.ready = threading.Event()  # set when loading ends, well or badly (for the CLI and tests)
        self.on_fatal: Callable[[BaseException], None] | None = None  # the process should exit with status 1
        self._engine_factory = engine_factory
        self.engine_loop: EngineLoop | None = None
        self.watchdog: StepWatchdog | None = None
        self.tokenizers = TokenizerLanes()
        self.model_name = config.served_model_name or ""
        self.max_model_len = 0
        self.vocab_size = 0
        self.chat = ChatSetup(config.chat_template, config.tool_call_parser, config.reasoning_parser)  # + detection on load
        self.grammars = None  # the engine's GrammarCompiler (thread-safe): structured output compiled off the loop
        self.metrics: ServerMetrics | None = None
        self.stat_logger: StatLogger | None = None
        self.recent = RecentActivity()  # the last minute, for /dashboard
        self._cpu_worker = ThreadPoolExecutor(2, thread_name_prefix="kvserve-cpu")
        self._in_flight = 0
        self._reserved = 0  # queue places held by requests being tokenized (QueueSlots), event loop only
        self._idle: asyncio.Event | None = None
        self._closing = False  # drained past the timeout: no new submissions at all

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Called on the event loop at startup: start the engine thread, which loads the model."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.engine_loop = EngineLoop(self._engine_factory, asyncio.get_running_loop(), self)
        self.engine_loop.start()
        if self.config.step_timeout > 0:
            self.watchdog = StepWatchdog(self.engine_loop, self.config.step_timeout)
            self.watchdog.start()

    async def close(self) -> None:
        if self.watchdog is not None:
            await self.watchdog.stop()
        if self.engine_loop is not None:
            await asyncio.to_thread(self.engine_loop.stop, 5.0)
        self.tokenizers.shutdown()
        self._cpu_worker.shutdown(wait=False, cancel_futures=True)

    async def drain(self, timeout: float) -> None:
        """Stop admitting, give in-flight requests `timeout` seconds to finish, then abort the rest."""
        if self.phase is Phase.READY:
            self._set_phase(Phase.DRAINING)
        logger.info("Draining: %d request(s) in flight, up to %.1f s", self._in_flight, timeout)
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return
        except asyncio.TimeoutError:
            pass
        self._closing = True
        streams = self.engine_loop.in_flight() if self.engine_loop is not None else []
        logger.warning("Shutdown timeout: aborting %d request(s)", len(streams))
        for stream in streams:
            stream.fail(APIError(503, "the server is shutting down; the request was aborted", code="server_shutdown"))
            self.engine_loop.abort(stream.request_id)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5.0)

    def _set_phase(self, phase: Phase) -> None:
        logger.info("Server phase: %s -> %s", self.phase.value, phase.value)
        self.phase = phase

    # ---- EngineListener (event loop) ----------------------------------------------------------------------
    def on_ready(self, engine) -> None:
        asyncio.ensure_future(self._finish_loading(engine))

    async def _finish_loading(self, engine) -> None:
        # Only configuration is read here; the engine itself belongs to its thread, which is idle until this
        # server turns ready. The tokenizer is copied, not shared: HF tokenizers are not safe to use from two
        # threads at once, and the engine thread detokenizes while this server's workers tokenize.
        mc = engine.model_config
        try:
            await self.tokenizers.load(engine.tokenizer)
        except Exception as e:  # noqa: BLE001
            logger.exception("Loading the server's tokenizer failed")
            self.on_load_failed(e)
            return
        self.model_name = self.config.served_model_name or mc.name
        self.max_model_len = engine.max_model_len
        self.vocab_size = mc.vocab_size
        self.grammars = engine.grammars
        self.chat = chat_setup(self.config, engine.tokenizer)
        try:
            self.peak = peak_for(self.peak_args, engine.config.device)
        except ValueError as e:
            logger.warning("No roofline peak: %s", e)
        logger.info("Roofline peak: %s", "none (utilization is not reported)" if self.peak is None else
                    f"{self.peak.flops / 1e12:g} TFLOP/s, {self.peak.bandwidth / 1e12:g} TB/s ({self.peak.source})")
        self.metrics = ServerMetrics(self.model_name, self.max_model_len, peak=self.peak)
        self.metrics.describe_memory(engine.config.cache.block_size, engine.executor.num_kv_blocks, mc.kv_storage_name,
                                     mc.quantization.method if mc.quantization else "none",
                                     engine.runner.weight_report.bytes_after)
        self.stat_logger = StatLogger(self.metrics)
        if self.phase is Phase.LOADING:
            self._set_phase(Phase.READY)
        self.ready.set()

    def on_load_failed(self, error: BaseException) -> None:
        self._set_phase(Phase.FAILED)
        self.ready.set()
        if self.on_fatal is not None:
            self.on_fatal(error)

    def on_step(self, output: StepOutput) -> None:
        if self.stat_logger is not None:
            self.stat_logger.record(output)
        self.recent.record(output)

    def on_failure(self, error: BaseException) -> None:
        self._set_phase(Phase.FAILED)
        if self.stat_logger is not None:
            self.stat_logger.engine_failed()  # nothing runs or waits any more; the gauges must say so
        if self.config.exit_on_engine_failure and self.on_fatal is not None:
            self.on_fatal(error)

    # ---- admission ----------------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if self.phase is not Phase.READY:
            raise unavailable({Phase.LOADING: "the model is still loading",
                               Phase.DRAINING: "the server is shutting down",
                               Phase.FAILED: "the engine has failed; the server needs a restart"}
                              .get(self.phase, "the server is not ready"))

    def admit(self) -> Ticket:
        """Count a new generation request in (503 unless ready)."""
        self.require_ready()
        self._in_flight += 1
        self._idle.clear()
        return Ticket(self)

    def _release(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"model: the model {model[:200]!r} does not exist; this server serves "
                                f"{self.model_name!r}", param="model", code="model_not_found")

    def reserve_queue(self, num_seqs: int, param: str) -> QueueSlots:
        """Hold `num_seqs` places in the waiting queue (n x prompts), or 429 when they would take it past
        --max-queue. Checked and taken in one go on the event loop, before the prompt is tokenized: a burst
        of requests all awaiting their tokenizer can never pass the cap together. `param` names the field
        that makes a request too large to ever fit (a 400)."""
        cap = self.config.max_queue
        if num_seqs > cap:
            raise bad_request(param, f"{param}: the request has {num_seqs} sequences (n x prompts), more than "
                                     f"the server's queue limit of {cap}")
        if self.engine_loop.num_waiting + self._reserved + num_seqs > cap:
            raise APIError(429, f"the server is overloaded: {cap} sequences are already waiting; retry later",
                           code="queue_full", headers={"Retry-After": str(self.config.retry_after_s)})
        self._reserved += num_seqs
        return QueueSlots(self, num_seqs)

    def submit(self, stream: RequestStream, prompt_token_ids: list[int], params, cache_salt: str | None = None) -> None:
        if self._closing or self.phase is Phase.FAILED:
            raise unavailable("the server is shutting down" if self._closing else "the engine has failed")
        self.engine_loop.submit(stream, prompt_token_ids, params, cache_salt)

    def abort(self, stream: RequestStream) -> None:
        if not stream.finished and self.engine_loop is not None:
            self.engine_loop.abort(stream.request_id)

    # ---- CPU work (off the event loop) ---------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The event loop's own copy of the tokenizer (None for a model without one); for quick lookups only."""
        return self.tokenizers.for_loop

    async def run_tokenizer(self, size: int, fn: Callable, *args):
        """`fn(tokenizer, *args)` off the loop, for work on about `size` characters of text."""
        if not self.tokenizers.available:
            raise bad_request("prompt", "prompt: this model has no tokenizer; send token ids")
        return await self.tokenizers.run(size, fn, *args)

    async def parse(self, body: bytes, model: type[M]) -> M:
        """`parsing.parse_request`, in a worker thread for a large body (a few ms of parsing on the loop would
        delay every other client; a thread costs ~0.1 ms, so small bodies are parsed in place)."""
        if len(body) <= INLINE_PARSE_BYTES:
            return parse_request(body, model)
        return await asyncio.get_running_loop().run_in_executor(self._cpu_worker, parse_request, body, model)

    async def run_cpu(self, fn: Callable, *args):
        """Other CPU work that could take milliseconds (serializing a large response body)."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu_worker, fn, *args)
