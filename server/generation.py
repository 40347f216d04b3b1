"""The part of /v1/completions and /v1/chat/completions after validation: submit, then stream or collect.

A request is handed to the engine thread, and the handler waits until the engine has taken it (so a prompt
too long for the context is still a plain 400). Then either
- streaming: an `SSEResponse` sends one frame per engine delta as it arrives; a failure mid-stream becomes
  an SSE error event followed by `[DONE]`; or
- non-streaming: the deltas are gathered into one body, racing the client's disconnect.
Either way, a client that leaves aborts its request in the engine, which frees its KV blocks.

A /v1/completions request with several prompts submits one engine request per prompt (a `StreamGroup`);
its choices are numbered prompt-major and its usage sums over the prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import Response
from starlette.requests import Request

from engine.sampling_params import ParamError, SamplingParams

from .context import QueueSlots, ServerContext, Ticket
from .errors import APIError
from .guard import CLIENT_CLOSED_REQUEST, AccessRecord
from .request_stream import StreamGroup
from .responses import DONE_FRAME, ChatFormatter, ChoiceAccumulator, Formatter, Usage, json_bytes, sse_frame
from .sampling import engine_param_error
from .sse import SSEResponse, wait_for_disconnect


logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """A validated generation request, ready for the engine."""

    request_id: str
    prompts: list[list[int]]  # the token ids of each prompt
    params: SamplingParams
    formatter: Formatter
    stream: bool
    include_usage: bool
    renames: dict[str, str]  # engine parameter names -> this endpoint's field names
    cache_salt: str | None = None
    slots: QueueSlots | None = None  # its places in the waiting queue, until submitted

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


async def run(ctx: ServerContext, http: Request, ticket: Ticket, record: AccessRecord, gen: Generation) -> Response:
    """Submit and answer. Owns `ticket` from here on: it is released when the response is over."""
    group = StreamGroup(gen.request_id, len(gen.prompts), gen.params.n, record.arrival)
    record.request_id = gen.request_id
    record.prompt_tokens = gen.num_prompt_tokens
    handed_off = False
    try:
        try:
            for stream, ids in zip(group.streams, gen.prompts):
                ctx.submit(stream, ids, gen.params, gen.cache_salt)
        finally:
            if gen.slots is not None:  # the engine loop counts the submitted sequences as waiting from here
                gen.slots.release()
        try:
            await group.accepted()
        except ParamError as e:
            raise engine_param_error(e, gen.renames) from None
        if gen.stream:
            handed_off = True
            return SSEResponse(_frames(group, gen, record), lambda: _close(ctx, group, ticket))
        return await _respond_whole(ctx, http, group, gen, record)
    finally:
        if not handed_off:
            _close(ctx, group, ticket)


def _close(ctx: ServerContext, group: StreamGroup, ticket: Ticket) -> None:
    for stream in group.streams:
        ctx.abort(stream)  # no-op when the stream finished
    ticket.release()


async def _frames(group: StreamGroup, gen: Generation, record: AccessRecord) -> AsyncIterator[bytes]:
    fmt = gen.formatter
    if isinstance(fmt, ChatFormatter):
        for i in range(gen.params.n):
            yield sse_frame(fmt.role_chunk(i))
    output_tokens = [0] * group.num_choices
    cached: dict[int, int] = {}
    try:
        async for delta in group:
            cached[delta.index // gen.params.n] = delta.num_cached_tokens  # per prompt: its last choice's
            if record.first_token_time is None and delta.new_token_ids:
                record.first_token_time = delta.token_time
            output_tokens[delta.index] = delta.num_output_tokens
            record.completion_tokens = sum(output_tokens)
            chunk = fmt.chunk(delta)
            if chunk is not None:
                yield sse_frame(chunk)
        if gen.include_usage:
            yield sse_frame(fmt.usage_chunk(Usage(gen.num_prompt_tokens, sum(output_tokens),
                                                  sum(cached.values()))))
    except APIError as e:
        yield sse_frame(e.body())
    except Exception:  # noqa: BLE001 - a bug here must still end the stream properly, not cut it
        logger.exception("Formatting the stream of %s failed", gen.request_id)
        yield sse_frame(APIError(500, "internal server error", code="internal_error").body())
    yield DONE_FRAME


async def _collect(group: StreamGroup, gen: Generation, record: AccessRecord) -> dict:
    fmt = gen.formatter
    choices = [ChoiceAccumulator(i) for i in range(group.num_choices)]
    cached: dict[int, int] = {}
    async for delta in group:
        cached[delta.index // gen.params.n] = delta.num_cached_tokens  # per prompt: its last choice's
        if record.first_token_time is None and delta.new_token_ids:
            record.first_token_time = delta.token_time
        fmt.add(choices[delta.index], delta)
    usage = Usage(gen.num_prompt_tokens, sum(c.num_output_tokens for c in choices),
                  sum(cached.values()))
    record.completion_tokens = usage.completion_tokens
    return fmt.response(choices, usage)


async def _respond_whole(ctx: ServerContext, http: Request, group: StreamGroup, gen: Generation,
                         record: AccessRecord) -> Response:
    collector = asyncio.ensure_future(_collect(group, gen, record))
    watcher = asyncio.ensure_future(wait_for_disconnect(http.receive))
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    if collector.cancelled():  # the client went away first; the caller aborts the request
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    # n choices of many tokens with logprobs make megabytes of JSON: serialized off the event loop.
    return Response(await ctx.run_cpu(json_bytes, collector.result()), media_type="application/json")
