"""One request's async stream of engine outputs, lived in and consumed on the event loop.

The engine thread never touches a `RequestStream` directly: it posts batches to the event loop (see
`engine_loop`), which calls `accept`/`fail`/`put` here. The HTTP handler awaits `accepted` (the engine took
the request, or said why not) and then iterates the stream, which yields `SequenceDelta`s until all n
choices have finished, or raises the `APIError` the request failed with.

A /v1/completions request with several prompts is one engine request per prompt: a `StreamGroup` of them,
whose streams feed one queue, with each delta's `index` renumbered prompt-major (prompt i, choice j ->
i * n + j, as OpenAI and vLLM number them).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from engine.outputs import SequenceDelta

from .errors import APIError


class RequestStream:
    def __init__(self, request_id: str, n: int, arrival: float, sink: asyncio.Queue | None = None,
                 index_base: int = 0):
        """`sink`: a queue shared with the other prompts' streams (`StreamGroup`); `index_base` is added to
        each delta's index."""
        self.request_id = request_id
        self.n = n
        self.arrival = arrival
        self.accepted: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue: asyncio.Queue[SequenceDelta | APIError] = asyncio.Queue() if sink is None else sink
        self._index_base = index_base
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
            if self._index_base:
                delta = dataclasses.replace(delta, index=delta.index + self._index_base)
            self._queue.put_nowait(delta)

    def fail(self, error: APIError) -> None:
        """End the stream with an error (the engine failed, or the server is shutting down)."""
        if self.finished:
            return
        self._queue.put_nowait(error)
        self.reject(error)

    def __aiter__(self) -> AsyncIterator[SequenceDelta]:
        return drain(self._queue, self.n)


class StreamGroup:
    """The streams of one request's prompts (one stream when there is one prompt), read as one."""

    def __init__(self, request_id: str, num_prompts: int, n: int, arrival: float):
        self.n = n
        if num_prompts == 1:
            self.streams = [RequestStream(request_id, n, arrival)]
            self._queue = self.streams[0]._queue
        else:
            self._queue = asyncio.Queue()
            self.streams = [RequestStream(f"{request_id}-{i}", n, arrival, self._queue, i * n)
                            for i in range(num_prompts)]

    @property
    def num_choices(self) -> int:
        return self.n * len(self.streams)

    async def accepted(self) -> None:
        """Wait until the engine took every prompt; the first refusal raises (the caller aborts the rest)."""
        for stream in self.streams:
            await stream.accepted

    def __aiter__(self) -> AsyncIterator[SequenceDelta]:
        return drain(self._queue, self.num_choices)


async def drain(queue: asyncio.Queue, num_sequences: int) -> AsyncIterator[SequenceDelta]:
    """The deltas in `queue` until `num_sequences` sequences have finished; an APIError put there is raised."""
    remaining = num_sequences
    while remaining:
        item = await queue.get()
        if isinstance(item, APIError):
            raise item
        if item.finished:
            remaining -= 1
        yield item
