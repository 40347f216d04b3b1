"""HTTP over a Ray Serve handle: one request as plain data, and the server's own ASGI app driven by it.

With `kvserve serve --replicas N`, Ray Serve's HTTP proxy hands each request to the ingress deployment, which
reads the body and calls an engine replica through a `DeploymentHandle` (so that a request router can see the
prompt). The engine replica runs the very same FastAPI app as the single server (`server.app.build_app`): this
module turns the forwarded request back into an ASGI call of that app and streams the ASGI messages it sends
back to the caller, one item each.

    proxy --ASGI--> ingress --ForwardedRequest (handle, Ray)--> engine replica --ASGI--> build_app(ctx)
    proxy <--ASGI-- ingress <--ASGI messages (stream, Ray)----- engine replica <--ASGI--

The forwarded request carries `prompt`, the routing key that Ray's prefix-cache-affinity router reads: the
prompt text of a completion, the concatenated messages of a chat, token ids as one character each (so a token
prefix is a string prefix), or, for every other route, the method and path. This module imports no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import ASGIApp, Message

logger = logging.getLogger(__name__)

REPLICA_HEADER = b"x-kvserve-replica"  # which engine replica answered (added by the replica, not by the app)
_TOKEN_CHAR_BASE = 0xE000  # token id t -> chr(0xE000 + t): above the surrogates, valid up to id 0x101FFF
_GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """One HTTP request, read in full at the ingress; what crosses from the ingress to an engine replica."""

    method: str
    path: str
    query_string: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    client: tuple[str, int] | None
    prompt: str  # the routing key (see the module docstring); never empty

    @staticmethod
    def from_scope(scope: dict, body: bytes) -> "ForwardedRequest":
        method, path = scope["method"], scope["path"]
        client = scope.get("client")
        return ForwardedRequest(method=method, path=path, query_string=scope.get("query_string", b""),
                                headers=tuple((bytes(k), bytes(v)) for k, v in scope["headers"]),
                                body=body, client=tuple(client) if client else None,
                                prompt=routing_key(method, path, body))

    def scope(self) -> dict:
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                "method": self.method, "scheme": "http", "path": self.path, "raw_path": self.path.encode(),
                "root_path": "", "query_string": self.query_string, "headers": [list(h) for h in self.headers],
                "client": list(self.client) if self.client else None, "server": None, "state": {}}


def routing_key(method: str, path: str, body: bytes) -> str:
    """The text a prefix-affinity router matches on: the prompt where there is one, else "METHOD PATH"."""
    fallback = f"{method} {path}"
    if method != "POST" or path not in _GENERATION_PATHS:
        return fallback
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return fallback  # the replica answers with the proper 400
    if not isinstance(data, dict):
        return fallback
    key = _chat_text(data.get("messages")) if path.endswith("/chat/completions") else _prompt_text(data.get("prompt"))
    return key or fallback


def _prompt_text(prompt: object) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return _prompt_text(prompt[0])  # several prompts (they usually share a prefix): keyed by the first
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if all(0 <= t < 0x110000 - _TOKEN_CHAR_BASE for t in prompt):
            return "".join(chr(_TOKEN_CHAR_BASE + t) for t in prompt)
    return ""


def _chat_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    parts = []
    for m in messages:
        if not isinstance(m, dict):
            return ""
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        parts.append(f"{m.get('role', '')}:{content if isinstance(content, str) else ''}\n")
    return "".join(parts)


async def call_app(app: ASGIApp, request: ForwardedRequest, extra_headers: list[tuple[bytes, bytes]] = ()
                   ) -> AsyncIterator[Message]:
    """Run `app` on `request` and yield every message it sends, as it sends it.

    If the consumer stops early (the client went away and the caller cancelled us), the app sees
    `http.disconnect` on its receive channel, exactly as under uvicorn, so it aborts the engine request and
    frees its KV blocks; the app task is then awaited (briefly) so nothing outlives the call.
    """
    outbox: asyncio.Queue = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start" and extra_headers:
            message = dict(message, headers=list(message.get("headers", [])) + list(extra_headers))
        await outbox.put(message)

    async def run() -> None:
        try:
            await app(request.scope(), receive, send)
        finally:
            await outbox.put(None)

    task = asyncio.ensure_future(run())
    started = False
    try:
        while True:
            message = await outbox.get()
            if message is None:
                break
            started = started or message["type"] == "http.response.start"
            yield message
        error = task.exception()
        if error is not None:  # Starlette re-raises after sending its 500; uvicorn would log it, so do we
            logger.error("The app raised on %s %s", request.method, request.path, exc_info=error)
            if not started:
                for message in _internal_error():
                    yield message
    finally:
        disconnected.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 10.0)


def _internal_error() -> list[Message]:
    body = json.dumps({"error": {"message": "internal server error", "type": "internal_server_error",
                                 "param": None, "code": "internal_error"}}).encode()
    return [{"type": "http.response.start", "status": 500,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
            {"type": "http.response.body", "body": body, "more_body": False}]
