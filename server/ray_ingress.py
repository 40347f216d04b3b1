"""The ingress deployment: the ASGI app behind Ray Serve's HTTP proxy that forwards to engine replicas.

Every request is read in full and sent to an engine replica through a `DeploymentHandle`, whose request router
(Ray's prefix-cache-affinity router, or Serve's power of two choices) sees the `ForwardedRequest` and its
routing key; the replica's ASGI messages are relayed as they come, so streaming stays streaming. The ingress
itself answers only two routes, both about the replicas:

    GET /metrics          every live replica's metrics in one exposition, with a `replica` label
    GET /metrics/targets  Prometheus HTTP service discovery: one target per replica's own /metrics

When a replica dies under a request, that request alone fails, with a clear error: a 503 with code
`replica_failed` if nothing was sent yet, else (a stream) an SSE error event and `[DONE]`, as the single server
does for an engine failure. The replica itself is restarted by Serve. Client disconnects cancel the handle
call, which aborts the request in the replica's engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import httpx
from starlette.types import Message, Receive, Scope, Send

from .config import ServerConfig
from .errors import APIError
from .guard import Guard, GuardLimits, send_error
from .metrics_merge import merge_expositions
from .ray_bridge import ForwardedRequest
from .ray_directory import ReplicaEntry

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 5.0
REPLICA_FAILED = ("the engine replica serving this request failed; it is being restarted, and other requests "
                  "are unaffected: retry the request")
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class ReplicaFailed(Exception):
    """The replica holding a request died (or could not be reached) before the answer was complete."""


def replica_failed_error() -> APIError:
    return APIError(503, REPLICA_FAILED, code="replica_failed", headers={"Retry-After": "1"})


class IngressApp:
    """The raw ASGI app. `forward(request)` is an async iterator of the replica's ASGI messages that raises
    `ReplicaFailed`; `list_replicas()` returns the live `ReplicaEntry`s."""

    def __init__(self, forward: Callable, list_replicas: Callable[[], Awaitable[list[ReplicaEntry]]],
                 config: ServerConfig):
        self._forward = forward
        self._list_replicas = list_replicas
        self._auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/metrics":
            await self._metrics(send)
        elif scope["method"] == "GET" and scope["path"] == "/metrics/targets":
            await self._targets(send)
        else:
            await self._relay(scope, receive, send)

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(receive)
        except APIError as e:  # Guard's limit on a body sent without Content-Length
            await send_error(send, e)
            return
        request = ForwardedRequest.from_scope(scope, body)
        started = sse = finished = False
        try:
            async for message in self._forward(request):
                if message["type"] == "http.response.start":
                    started = True
                    sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                              for k, v in message.get("headers", []))
                finished = message["type"] == "http.response.body" and not message.get("more_body", False)
                await send(message)
        except ReplicaFailed as e:
            logger.warning("%s %s failed: %s", request.method, request.path, e)
            if not started:
                await send_error(send, replica_failed_error())
            elif sse and not finished:
                error = json.dumps(replica_failed_error().body()).encode()
                await send({"type": "http.response.body", "body": b"data: " + error + b"\n\ndata: [DONE]\n\n",
                            "more_body": False})
            elif not finished:
                raise  # a half-sent plain body cannot be repaired: let the connection drop
            return
        if not started:  # the replica's app ended without answering (it logged why)
            await send_error(send, APIError(500, "internal server error", code="internal_error"))

    async def _replicas(self, send: Send) -> list[ReplicaEntry] | None:
        try:
            return await self._list_replicas()
        except Exception as e:  # noqa: BLE001 - the directory is restarting or unreachable
            logger.warning("The replica directory did not answer: %s", e)
            await send_error(send, APIError(503, "the list of replicas is not available right now; retry",
                                            code="service_unavailable", headers={"Retry-After": "1"}))
            return None

    async def _metrics(self, send: Send) -> None:
        texts = {}
        replicas = await self._replicas(send)
        if replicas is None:
            return
        results = await asyncio.gather(*(self._scrape(e) for e in replicas))
        for entry, text in zip(replicas, results):
            if text is not None:
                texts[entry.replica] = text
        try:
            body = merge_expositions(texts)
        except ValueError as e:
            logger.error("Merging the replicas' metrics failed: %s", e)
            await send_error(send, APIError(500, "the replicas' metrics could not be merged", code="internal_error"))
            return
        await _send_body(send, 200, body, METRICS_CONTENT_TYPE)

    async def _scrape(self, entry: ReplicaEntry) -> str | None:
        """A replica's exposition, or None if it cannot be read now (e.g. it just died)."""
        try:
            resp = await self._http.get(entry.metrics_url, headers=self._auth)
        except httpx.HTTPError as e:
            logger.info("Replica %s: metrics unreachable (%s)", entry.replica, type(e).__name__)
            return None
        return resp.text if resp.status_code == 200 else None

    async def _targets(self, send: Send) -> None:
        replicas = await self._replicas(send)
        if replicas is None:
            return
        groups = [{"targets": [e.target], "labels": {"replica": e.replica, "node": e.node,
                                                     "__meta_kvserve_pid": str(e.pid)}}
                  for e in replicas]
        await _send_body(send, 200, json.dumps(groups).encode(), b"application/json")


def build_ingress_app(forward: Callable, list_replicas: Callable[[], Awaitable[list[ReplicaEntry]]],
                      config: ServerConfig):
    """The ingress app behind the same `Guard` as the single server: API key and body limit are checked
    here, before a body is read or sent anywhere (the replica's own Guard checks them again)."""
    return Guard(IngressApp(forward, list_replicas, config), GuardLimits.of(config, access_log=False))


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_body(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
