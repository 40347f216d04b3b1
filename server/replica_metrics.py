"""One engine replica's own `/metrics` listener, on its node's address, for Prometheus and the ingress.

Under Ray Serve the replica's FastAPI app is reached only through the ingress, which routes each request to
one replica of its choice; metrics must instead come from every replica. So each replica also serves its
registry on a port of its own: a tiny Starlette app behind the same `Guard` (API key) as the main app, run by
uvicorn on the replica's event loop. uvicorn's signal handling is left out: signals belong to Ray's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from .app import error_response
from .context import ServerContext
from .errors import APIError, unavailable
from .guard import Guard, GuardLimits

PORT_ATTEMPTS = 64  # with a fixed base port, replicas on one node take the next free ones


def metrics_app(ctx: ServerContext):
    async def metrics(request):
        if ctx.metrics is None:
            raise unavailable("the model is still loading")
        return Response(ctx.metrics.render(), media_type=ctx.metrics.CONTENT_TYPE)

    async def on_api_error(request, exc: APIError):
        return error_response(exc)

    app = Starlette(routes=[Route("/metrics", metrics)], exception_handlers={APIError: on_api_error})
    return Guard(app, GuardLimits.of(ctx.config, access_log=False))


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`: `port` or the next free of PORT_ATTEMPTS ports (0 = any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in ([0] if port == 0 else range(port, min(port + PORT_ATTEMPTS, 65536))):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((host, candidate))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                continue
            raise
        sock.listen(128)
        sock.setblocking(False)
        return sock
    raise OSError(errno.EADDRINUSE, f"replica_metrics_port: no free port in [{port}, {port + PORT_ATTEMPTS})")


class MetricsListener:
    """Started with `await start()` on the replica's event loop; `await stop()` closes it."""

    def __init__(self, ctx: ServerContext, host: str, port: int):
        self._sock = bind_socket(host, port)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/metrics"
        config = uvicorn.Config(metrics_app(ctx), log_level="warning", access_log=False, lifespan="off",
                                server_header=False, http="h11")
        self._server = _QuietServer(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5.0)
        self._sock.close()
