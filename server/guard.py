"""ASGI middleware in front of every route: request-head size, API key, body size and time, last-resort
errors, and the access log.

- Head size: a request line plus headers over `max_header_bytes` is refused (431). h11 only bounds a head
  that arrives in pieces; one that arrives in a single read would otherwise pass at any size.
- API key: `Authorization: Bearer KEY` on every route except /health, compared in constant time
  (hmac.compare_digest of SHA-256 digests, so neither the key's content nor its length leaks by timing).
  A browser cannot send a bearer token when it opens a page, so HTTP Basic credentials with the key as the
  password (any user name) count too; a 401 on /dashboard asks for them (`WWW-Authenticate: Basic`).
- Body type: a body whose Content-Type is given and is not JSON is refused (415); none means JSON.
- Body size: a Content-Length over the limit is refused (413) before reading; a body sent without one
  (chunked) is counted as it streams in and refused once it crosses the limit.
- Body time: the whole body must arrive within `body_timeout` seconds of the request head (408), so a
  client that trickles its body cannot hold a request open for ever.
- Last resort: an exception no handler turned into a response becomes a 500 in the OpenAI envelope here,
  and is not re-raised: uvicorn would log it a second time and close the keep-alive connection, so the
  client's next request on it would fail. A client that leaves while sending its body is logged on one
  line, without a traceback: that is the client's doing, not a server error.
- Access log: one line per HTTP request when the response has been sent in full (for a stream: at its
  end), with what the handler recorded in `AccessRecord`: request id, tokens, time to first token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

if TYPE_CHECKING:
    from .config import ServerConfig

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("kvserve.access")

OPEN_PATHS = frozenset({"/health"})
BROWSER_PATHS = ("/dashboard",)  # pages a person opens: a 401 there asks the browser for Basic credentials
ACCESS_KEY = "kvserve.access"  # scope key of the request's AccessRecord
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"; only the access log sees it


@dataclass
class AccessRecord:
    """Filled in by handlers; read by the access log. `arrival` is when the request reached the server."""

    arrival: float
    request_id: str = "-"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_time: float | None = None


@dataclass(frozen=True)
class GuardLimits:
    api_key: str | None
    max_body_bytes: int
    max_header_bytes: int
    body_timeout: float
    access_log: bool

    @classmethod
    def of(cls, config: ServerConfig, access_log: bool | None = None) -> GuardLimits:
        """The limits of a `ServerConfig`; `access_log` overrides the config's (off where another layer logs)."""
        return cls(api_key=config.api_key, max_body_bytes=config.max_body_bytes,
                   max_header_bytes=config.max_header_bytes, body_timeout=config.request_body_timeout,
                   access_log=config.access_log if access_log is None else access_log)


def access_record(scope: Scope) -> AccessRecord:
    record = scope.get(ACCESS_KEY)
    if record is None:
        record = scope[ACCESS_KEY] = AccessRecord(time.time())
    return record


def error_bytes(error: APIError) -> bytes:
    return json.dumps(error.body()).encode()


async def send_error(send: Send, error: APIError) -> None:
    body = error_bytes(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in (b"application/json", b"") or (media.startswith(b"application/") and media.endswith(b"+json"))


def head_size(scope: Scope) -> int:
    """Bytes of the request line and headers as sent (give or take the separators)."""
    size = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 12
    return size + sum(len(k) + len(v) + 4 for k, v in scope["headers"])


class Guard:
    def __init__(self, app: ASGIApp, limits: GuardLimits):
        self.app = app
        self.limits = limits
        self._key_digest = hashlib.sha256(limits.api_key.encode()).digest() if limits.api_key else None

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
        except ClientDisconnect:
            status = status or CLIENT_CLOSED_REQUEST
            logger.info("%s %s: the client disconnected before sending its whole request body",
                        scope["method"], scope["path"][:200])
        except Exception:
            if status:  # the response has begun: nothing left but to let uvicorn close the connection
                raise
            logger.exception("Unhandled error on %s %s", scope["method"], scope["path"][:200])
            await send_error(send_and_note, APIError(500, "internal server error", code="internal_error"))
        finally:
            if self.limits.access_log:
                self._log(scope, record, status or 500)

    def _check(self, scope: Scope) -> APIError | None:
        if head_size(scope) > self.limits.max_header_bytes:
            return APIError(431, f"the request line and headers are larger than the limit of "
                                 f"{self.limits.max_header_bytes} bytes", code="headers_too_large",
                            headers={"Connection": "close"})
        headers = dict(scope["headers"])
        if self._key_digest is not None and scope["path"] not in OPEN_PATHS:
            if not self._authorized(headers.get(b"authorization", b"")):
                browser = scope["path"].startswith(BROWSER_PATHS)
                return APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                code="invalid_api_key",
                                headers={"WWW-Authenticate": 'Basic realm="kvserve"' if browser else "Bearer"})
        content_type = headers.get(b"content-type")
        if content_type is not None and scope["method"] in ("POST", "PUT", "PATCH") and not _is_json(content_type):
            return APIError(415, f"the request body must be JSON (Content-Type: application/json), got "
                                 f"{content_type[:100].decode('latin-1')!r}", code="unsupported_media_type")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return APIError(400, "Content-Length must be a non-negative integer", code="invalid_header")
            if int(length) > self.limits.max_body_bytes:
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
        # No "Connection: close": closing with the rest of the body unread makes the kernel reset the
        # connection, and the client may never see this answer. uvicorn reads and drops the rest of the
        # body instead, for as long as http_protocol allows.
        return APIError(413, f"the request body is larger than the limit of {self.limits.max_body_bytes} bytes",
                        code="request_too_large")

    def _limited(self, receive: Receive) -> Receive:
        """`receive` that counts the body against the size limit and holds it to the time limit; once the
        body is complete it is left alone (it then waits for the client to disconnect, for as long as the
        response takes)."""
        seen = 0
        complete = False
        deadline = time.monotonic() + self.limits.body_timeout

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise APIError(408, f"the request body did not arrive within {self.limits.body_timeout:g} s",
                               code="request_timeout", headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.limits.max_body_bytes:
                    raise self._too_large()
            else:
                complete = True
            return message

        return counted

    @staticmethod
    def _log(scope: Scope, r: AccessRecord, status: int) -> None:
        now = time.time()
        ttft = f"{r.first_token_time - r.arrival:.3f}" if r.first_token_time is not None else "-"
        client = scope.get("client") or ("-", 0)
        access_logger.info("%s:%s \"%s %s\" %d id=%s prompt_tokens=%s completion_tokens=%s ttft_s=%s e2e_s=%.3f",
                           client[0], client[1], scope["method"], scope["path"][:200], status, r.request_id,
                           "-" if r.prompt_tokens is None else r.prompt_tokens,
                           "-" if r.completion_tokens is None else r.completion_tokens, ttft, now - r.arrival)
