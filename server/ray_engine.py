"""One kvserve engine as a Ray Serve replica: the single server's app and engine, driven through a handle.

Each replica owns what `kvserve serve` owns in one process: a `ServerContext` (engine thread, tokenizer,
metrics) and the FastAPI app of `server.app.build_app`, whose lifespan starts and stops the engine. Requests
arrive from the ingress as `ForwardedRequest`s and leave as the app's own ASGI messages (`server.ray_bridge`),
so every route, validation rule and error of the single server holds here unchanged.

    __init__      lifespan startup (the engine thread loads the model), wait until ready (Serve routes to
                  the replica only after this returns), start the replica's /metrics listener, heartbeat
    handle        one HTTP request -> the app's ASGI messages, streamed; adds the x-kvserve-replica header
    check_health  raises once the engine has failed, so Serve replaces the replica
    __del__       after Serve's graceful shutdown has waited for the in-flight requests: leave the
                  directory, lifespan shutdown (stops the engine thread)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from engine.config import EngineArgs
from engine.tools.peaks import PeakArgs

from .app import build_app
from .config import ServerConfig
from .context import Phase, ServerContext
from .ray_bridge import REPLICA_HEADER, ForwardedRequest, call_app
from .ray_directory import HEARTBEAT_S, ReplicaEntry
from .replica_metrics import MetricsListener

logger = logging.getLogger(__name__)

DIRECTORY_CALL_TIMEOUT_S = 2.0


class EngineReplica:
    async def __init__(self, server_config: ServerConfig, engine_args: EngineArgs, directory, metrics_port: int,
                       peak_args: PeakArgs | None = None):
        import ray
        from ray import serve

        def build_engine():
            from engine.engine import LLMEngine

            return LLMEngine.from_args(engine_args)

        self._ctx = ctx = ServerContext(server_config, build_engine, peak_args)
        self._app = build_app(ctx)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        await asyncio.to_thread(ctx.ready.wait)
        if ctx.phase is not Phase.READY:
            raise RuntimeError("the engine replica could not load its model (see the replica's log)")
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._header = [(REPLICA_HEADER, self.replica_id.encode())]
        node = ray.util.get_node_ip_address()
        self._metrics = MetricsListener(ctx, node, metrics_port)
        await self._metrics.start()
        self._entry = ReplicaEntry(self.replica_id, node, self._metrics.url, os.getpid())
        self._directory = directory
        self._beating = asyncio.ensure_future(self._heartbeat())
        logger.info("Engine replica %s ready; metrics on %s", self.replica_id, self._metrics.url)

    async def handle(self, request: ForwardedRequest):
        """Answer one HTTP request; an async generator of ASGI messages (call with `stream=True`)."""
        async for message in call_app(self._app, request, self._header):
            yield message

    def check_health(self) -> None:
        if self._ctx.phase is Phase.FAILED:
            raise RuntimeError("the engine has failed")

    async def _heartbeat(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._directory.heartbeat.remote(self._entry), DIRECTORY_CALL_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - the directory may be restarting; try again next beat
                logger.warning("Replica heartbeat failed: %s", e)
            await asyncio.sleep(HEARTBEAT_S)

    async def __del__(self):
        # Also called after a failed __init__: undo only what was done.
        if getattr(self, "_beating", None) is not None:
            self._beating.cancel()
            # The directory may be gone already (the whole application is being deleted), and a handle call
            # waits for a replica to appear: bound it. The entry expires by itself anyway.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._directory.remove.remote(self.replica_id), DIRECTORY_CALL_TIMEOUT_S)
        if getattr(self, "_ctx", None) is not None and self._ctx.phase is not Phase.LOADING:
            await self._ctx.drain(self._ctx.config.shutdown_timeout)
        if getattr(self, "_metrics", None) is not None:
            await self._metrics.stop()
        if getattr(self, "_lifespan", None) is not None:
            with contextlib.suppress(Exception):
                await self._lifespan.__aexit__(None, None, None)
