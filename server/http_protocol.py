"""uvicorn's h11 protocol with three changes: its own error responses in the OpenAI envelope, a time limit
on the request head, and a bounded drain of a body that was answered before it was read.

- A request that is not valid HTTP/1.1 (a broken request line, a malformed header, a head over h11's
  buffer limit) never reaches the app: uvicorn answers it itself, as plain text. Here it is the envelope.
- uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`), but has
  no limit on how long a request head may take: a connection that sends nothing, or sends its headers one
  byte at a time (slowloris), is held open for ever. Here a connection must complete its request head
  within `head_timeout` seconds of its opening or of the head's first byte. A connection that sent part of
  a head gets a 408 in the envelope; one that sent nothing is closed silently (as nginx does).
- A request refused before its body was read (413 by Content-Length, 431) must not be answered and then
  closed at once: unread data makes the kernel reset the connection, and the client may see the reset
  instead of the answer. On a connection that stays open uvicorn reads and drops the rest of such a body;
  on one that closes, `_LingeringClose` sends FIN first and drops what still comes in. Either way the drain
  is bounded to `DRAIN_SECONDS`, after which the connection is closed (nginx's "lingering close").

The body's own time limit is kept by `guard.Guard`, which can answer it with a normal response.
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import APIError

logger = logging.getLogger(__name__)


def _raw_error_response(error: APIError) -> bytes:
    body = json.dumps(error.body()).encode()
    head = (f"HTTP/1.1 {error.status} {'Request Timeout' if error.status == 408 else 'Bad Request'}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


DRAIN_SECONDS = 5.0


class _LingeringClose:
    """The connection's transport, except that `close()` while the request body is still arriving stops
    writing (FIN) and lets the protocol drop incoming data until the client closes or time is up."""

    def __init__(self, transport: asyncio.Transport, protocol: "EnvelopeH11Protocol"):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def close(self) -> None:
        p = self._protocol
        if p.lingering or self._transport.is_closing() or p.conn.their_state is not h11.SEND_BODY:
            self._transport.close()
            return
        p.lingering = True
        if self._transport.can_write_eof():
            self._transport.write_eof()  # after the buffered response is sent
        p.drain_until(DRAIN_SECONDS, self._transport.close)


class EnvelopeH11Protocol(H11Protocol):
    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self.lingering = False
        super().connection_made(_LingeringClose(transport, self))  # type: ignore[arg-type]
        self._arm_head_timer()

    def drain_until(self, seconds: float, then) -> None:
        if self._drain_timer is None:
            self._drain_timer = self.loop.call_later(seconds, then)

    def eof_received(self) -> None:
        return None  # the client is done: asyncio closes the transport (and ends any lingering close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # the answer is sent and the connection is closing: what still comes is dropped
        super().data_received(data)
        self._sync_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_head_timer()

    # ---- the head timer -------------------------------------------------------------------------------------
    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def _sync_head_timer(self) -> None:
        """Armed while a head is incomplete; uvicorn's keep-alive timer covers a connection with no data yet."""
        if self.transport.is_closing() or not self._waiting_for_head():
            self._cancel_head_timer()
        elif self.timeout_keep_alive_task is None:
            self._arm_head_timer()
        if self._draining():
            self.drain_until(DRAIN_SECONDS, self._on_drain_timeout)

    def _draining(self) -> bool:
        """The response is complete, the request body is not: uvicorn is dropping the rest of it."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY

    def _on_drain_timeout(self) -> None:
        self._drain_timer = None
        if self._draining() and not self.transport.is_closing():
            self.transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._on_head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._waiting_for_head():
            return
        partial = bool(self.conn.trailing_data[0])
        logger.info("Closing a connection from %s that sent %s request head within %.1f s",
                    self.client, "no complete" if partial else "no", self.head_timeout)
        if partial:
            self.transport.write(_raw_error_response(APIError(
                408, f"the request head did not arrive within {self.head_timeout:g} s", code="request_timeout")))
        self.transport.close()

    # ---- uvicorn's own 400 ----------------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        error = APIError(400, "the request is not valid HTTP/1.1 (malformed request line or headers, or "
                              "headers too large)", code="invalid_http")
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def envelope_h11_protocol(head_timeout: float) -> type[EnvelopeH11Protocol]:
    """The protocol class for uvicorn's `http=` setting, with this server's head timeout."""
    return type("EnvelopeH11Protocol", (EnvelopeH11Protocol,), {"head_timeout": head_timeout})
