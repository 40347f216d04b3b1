"""Running the app under uvicorn: the startup line, and SIGTERM/SIGINT as a graceful drain.

uvicorn on its own closes the listening socket at the first signal (new clients get "connection
refused", not a 503) and re-raises the signal after shutdown (the process dies by SIGTERM instead of
exiting 0). `DrainingServer` instead keeps listening while it drains: /health and new requests get 503,
in-flight requests get `shutdown_timeout` seconds to finish, the rest are aborted; then uvicorn's own
shutdown runs and the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvicorn

from .context import Phase, ServerContext
from .http_protocol import envelope_h11_protocol

logger = logging.getLogger(__name__)


def uvicorn_config(app, ctx: ServerContext, **overrides) -> uvicorn.Config:
    cfg = ctx.config
    # h11 with our envelope and head timeout; the head-size limit is h11's for heads that come in pieces and
    # guard.Guard's for heads that come in one read; idle keep-alive connections close after keep_alive_timeout.
    kwargs = dict(host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                  http=envelope_h11_protocol(cfg.request_head_timeout),
                  h11_max_incomplete_event_size=cfg.max_header_bytes, timeout_keep_alive=cfg.keep_alive_timeout,
                  lifespan="on", timeout_graceful_shutdown=5, server_header=False)
    kwargs.update(overrides)
    return uvicorn.Config(app, **kwargs)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ctx: ServerContext):
        super().__init__(config)
        self.ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.exit_code = 0
        self.url = ""
        ctx.on_fatal = self._on_fatal

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self._bound_address(sockets)
            self.url = f"http://{host}:{port}"
            print(f"kvserve: serving on {self.url} (model loading; GET /health turns 200 when ready)", flush=True)

    def _bound_address(self, sockets) -> tuple[str, int]:
        for s in (sockets or []) + [s for srv in self.servers for s in (srv.sockets or [])]:
            addr = s.getsockname()
            if isinstance(addr, tuple):
                host = addr[0]
                return (f"[{host}]" if ":" in host else host), addr[1]
        return self.config.host, self.config.port

    def handle_exit(self, sig: int, frame) -> None:
        # Runs in the main thread between bytecodes; hand the work to the event loop.
        if self._draining or self._loop is None:
            self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        logger.info("Received %s: draining", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            await self.ctx.drain(self.ctx.config.shutdown_timeout)
        finally:
            if self.ctx.phase is Phase.FAILED:
                self.exit_code = 1  # the process ends because its engine failed, whoever sent the signal
            self.should_exit = True

    def _on_fatal(self, error: BaseException) -> None:
        what = "could not be loaded" if self.ctx.metrics is None else "failed"
        logger.error("The engine %s (%s: %s); exiting with status 1", what, type(error).__name__, error)
        self.exit_code = 1
        self.should_exit = True
