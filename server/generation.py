"""The part of /v1/completions and /v1/chat/completions after validation: submit, then stream or collect.

A request is handed to the engine thread, and the handler waits until the engine has taken it (so a prompt
too long for the context is still a plain 400). Then either
- streaming: an `SSEResponse` sends one frame per engine delta as it arrives; a failure mid-stream becomes
  an SSE error event followed by `[DONE]`; or
- non-streaming: the deltas are gathered into one body, racing the client's disconnect.
Either way, a client that leaves aborts its request in the engine, which frees its KV blocks.
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

from .context import ServerContext, Ticket
from .errors import APIError
from .guard import CLIENT_CLOSED_REQUEST, AccessRecord
from .request_stream import RequestStream
from .responses import DONE_FRAME, ChatFormatter, ChoiceAccumulator, Formatter, Usage, json_bytes, sse_frame
from .sampling import engine_param_error
from .sse import SSEResponse, wait_for_disconnect


logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """A validated generation request, ready for the engine."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    formatter: Formatter
    stream: bool
    include_usage: bool
    renames: dict[str, str]  # engine parameter names -> this endpoint's field names


async def run(ctx: ServerContext, http: Request, ticket: Ticket, record: AccessRecord, gen: Generation) -> Response:
    """Submit and answer. Owns `ticket` from here on: it is released when the response is over."""
    stream = RequestStream(gen.request_id, gen.params.n, record.arrival)
    record.request_id = gen.request_id
    record.prompt_tokens = len(gen.prompt_token_ids)
    handed_off = False
    try:
        ctx.submit(stream, gen.prompt_token_ids, gen.params)
        try:
            await stream.accepted
        except ParamError as e:
            raise engine_param_error(e, gen.renames) from None
        if gen.stream:
            handed_off = True
            return SSEResponse(_frames(stream, gen, record), lambda: _close(ctx, stream, ticket))
        return await _respond_whole(ctx, http, stream, gen, record)
    finally:
        if not handed_off:
            ctx.abort(stream)
            ticket.release()


def _close(ctx: ServerContext, stream: RequestStream, ticket: Ticket) -> None:
    ctx.abort(stream)  # no-op when the stream finished
    ticket.release()


async def _frames(stream: RequestStream, gen: Generation, record: AccessRecord) -> AsyncIterator[bytes]:
    fmt = gen.formatter
    if isinstance(fmt, ChatFormatter):
        for i in range(gen.params.n):
            yield sse_frame(fmt.role_chunk(i))
    output_tokens = [0] * gen.params.n
    try:
        async for delta in stream:
            if record.first_token_time is None and delta.new_token_ids:
                record.first_token_time = delta.token_time
            output_tokens[delta.index] = delta.num_output_tokens
            record.completion_tokens = sum(output_tokens)
            chunk = fmt.chunk(delta)
            if chunk is not None:
                yield sse_frame(chunk)
        if gen.include_usage:
            yield sse_frame(fmt.usage_chunk(Usage(len(gen.prompt_token_ids), sum(output_tokens))))
    except APIError as e:
        yield sse_frame(e.body())
    except Exception:  # noqa: BLE001 - a bug here must still end the stream properly, not cut it
        logger.exception("Formatting the stream of %s failed", gen.request_id)
        yield sse_frame(APIError(500, "internal server error", code="internal_error").body())
    yield DONE_FRAME


async def _collect(stream: RequestStream, gen: Generation, record: AccessRecord) -> dict:
    fmt = gen.formatter
    choices = [ChoiceAccumulator(i) for i in range(gen.params.n)]
    async for delta in stream:
        if record.first_token_time is None and delta.new_token_ids:
            record.first_token_time = delta.token_time
        choices[delta.index].add(delta, fmt.logprobs(delta))
    usage = Usage(len(gen.prompt_token_ids), sum(c.num_output_tokens for c in choices))
    record.completion_tokens = usage.completion_tokens
    return fmt.response(choices, usage)


async def _respond_whole(ctx: ServerContext, http: Request, stream: RequestStream, gen: Generation,
                         record: AccessRecord) -> Response:
    collector = asyncio.ensure_future(_collect(stream, gen, record))
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
