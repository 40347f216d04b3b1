"""A Server-Sent-Events response that notices a client leaving even while no token is being sent.

It sends frames as the iterator yields them (one frame, one `send`: nothing is batched) and, at the same
time, waits for `http.disconnect` on the request channel. A disconnect cancels the frame iterator at
whatever await it is in. `on_close` runs exactly once however the response ends (finished, client gone,
server error), so the owner can abort the engine request and release what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone. Call only after the request body was read in full."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SSEResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[bytes], on_close: Callable[[], None]):
        super().__init__(status_code=200)
        self.frames = frames
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and not sender.done():  # the client left first
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await sender
            else:
                sender.result()  # re-raise a failure of the sender
        finally:
            for task in (sender, watcher):
                task.cancel()
            with contextlib.suppress(Exception):
                await self.frames.aclose()
            self.on_close()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async for frame in self.frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
