"""ASGI middleware in front of every route: API key, request-body size limit, and the access log.

- API key: `Authorization: Bearer KEY` on every route except /health, compared in constant time
  (hmac.compare_digest of SHA-256 digests, so neither the key's content nor its length leaks by timing).
  A browser cannot send a bearer token when it opens a page, so HTTP Basic credentials with the key as the
  password (any user name) count too; a 401 on /dashboard asks for them (`WWW-Authenticate: Basic`).
- Body size: a Content-Length over the limit is refused (413) before reading; a body sent without one
  (chunked) is counted as it streams in and refused once it crosses the limit.
- Access log: one line per HTTP request when the response has been sent in full (for a stream: at its
  end), with what the handler recorded in `AccessRecord`: request id, tokens, time to first token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

access_logger = logging.getLogger("kvserve.access")

OPEN_PATHS = frozenset({"/health"})
BROWSER_PATHS = ("/dashboard",)  # pages a person opens: a 401 there asks the browser for Basic credentials
ACCESS_KEY = "kvserve.access"  # scope key of the request's AccessRecord


@dataclass
class AccessRecord:
    """Filled in by handlers; read by the access log. `arrival` is when the request reached the server."""

    arrival: float
    request_id: str = "-"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_time: float | None = None


def access_record(scope: Scope) -> AccessRecord:
    record = scope.get(ACCESS_KEY)
    if record is None:
        record = scope[ACCESS_KEY] = AccessRecord(time.time())
    return record


async def send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int, access_log: bool):
        self.app = app
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = access_record(scope)
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            error = self._check(scope)
            if error is not None:
                await send_error(send_and_note, error)
                return
            await self.app(scope, self._limited(receive), send_and_note)
        except BaseException:
            status = status or 500  # the outermost middleware turns it into a 500
            raise
        finally:
            if self.access_log:
                self._log(scope, record, status)

    def _check(self, scope: Scope) -> APIError | None:
        headers = dict(scope["headers"])
        if self._key_digest is not None and scope["path"] not in OPEN_PATHS:
            if not self._authorized(headers.get(b"authorization", b"")):
                browser = scope["path"].startswith(BROWSER_PATHS)
                return APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                code="invalid_api_key",
                                headers={"WWW-Authenticate": 'Basic realm="kvserve"' if browser else "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return APIError(400, "Content-Length must be a non-negative integer", code="invalid_header")
            if int(length) > self.max_body_bytes:
                return self._too_large()
        return None

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":  # user:key, base64; the user name is ignored
            try:
                token = base64.b64decode(token.strip(), validate=True).decode("latin-1").partition(":")[2]
            except (binascii.Error, ValueError):
                return False
        given = hashlib.sha256(token.strip().encode("latin-1")).digest()
        return hmac.compare_digest(given, self._key_digest) and scheme in ("bearer", "basic")

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than the limit of {self.max_body_bytes} bytes",
                        code="request_too_large")

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise self._too_large()
            return message

        return counted

    @staticmethod
    def _log(scope: Scope, r: AccessRecord, status: int) -> None:
        now = time.time()
        ttft = f"{r.first_token_time - r.arrival:.3f}" if r.first_token_time is not None else "-"
        client = scope.get("client") or ("-", 0)
        access_logger.info("%s:%s \"%s %s\" %d id=%s prompt_tokens=%s completion_tokens=%s ttft_s=%s e2e_s=%.3f",
                           client[0], client[1], scope["method"], scope["path"], status, r.request_id,
                           "-" if r.prompt_tokens is None else r.prompt_tokens,
                           "-" if r.completion_tokens is None else r.completion_tokens, ttft, now - r.arrival)
