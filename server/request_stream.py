"""One request's async stream of engine outputs, lived in and consumed on the event loop.

The engine thread never touches a `RequestStream` directly: it posts batches to the event loop (see
`engine_loop`), which calls `accept`/`fail`/`put` here. The HTTP handler awaits `accepted` (the engine took
the request, or said why not) and then iterates the stream, which yields `SequenceDelta`s until all n
choices have finished, or raises the `APIError` the request failed with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine.outputs import SequenceDelta

from .errors import APIError


class RequestStream:
    def __init__(self, request_id: str, n: int, arrival: float):
        self.request_id = request_id
        self.n = n
        self.arrival = arrival
        self.accepted: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue: asyncio.Queue[SequenceDelta | APIError] = asyncio.Queue()
        self._num_finished = 0
        self.failed = False

    @property
    def finished(self) -> bool:
        """Every choice has its final delta, or the request failed: the reader will get nothing more."""
        return self._num_finished >= self.n or self.failed

    def accept(self, prompt_token_ids: list[int]) -> None:
        if not self.accepted.done():
            self.accepted.set_result(prompt_token_ids)

    def reject(self, error: Exception) -> None:
        """The engine refused the request (bad input): awaiting `accepted` raises `error`."""
        self.failed = True
        if not self.accepted.done():
            self.accepted.set_exception(error)
            self.accepted.exception()  # mark retrieved: the handler may have gone (client disconnected)

    def put(self, delta: SequenceDelta) -> None:
        if delta.finished:
            self._num_finished += 1
        if not self.failed:
            self._queue.put_nowait(delta)

    def fail(self, error: APIError) -> None:
        """End the stream with an error (the engine failed, or the server is shutting down)."""
        if self.finished:
            return
        self._queue.put_nowait(error)
        self.reject(error)

    async def __aiter__(self) -> AsyncIterator[SequenceDelta]:
        remaining = self.n
        while remaining:
            item = await self._queue.get()
            if isinstance(item, APIError):
                raise item
            if item.finished:
                remaining -= 1
            yield item
