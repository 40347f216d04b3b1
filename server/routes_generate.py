"""POST /v1/completions and POST /v1/chat/completions: validate, tokenize off-loop, then `generation.run`.

Order of checks, cheapest first, each a distinct status: 503 not ready -> 400 body/fields -> 404 model ->
429 queue full -> 400 prompt (tokenizer, then the engine: vocabulary and context window).
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter
from starlette.requests import Request

from .context import ServerContext
from .errors import bad_request, cap
from .generation import Generation, run
from .guard import access_record
from .parsing import parse_request
from .protocol import ChatCompletionRequest, CompletionRequest
from .responses import ChatFormatter, CompletionFormatter, TokenTexts
from .sampling import apply_model_limits, chat_params, chat_renames, completion_params


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)


def _apply_chat_template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer.encode(text, add_special_tokens=False)


async def chat_prompt_ids(ctx: ServerContext, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    try:
        return await ctx.run_tokenizer(_apply_chat_template, messages, add_generation_prompt)
    except ValueError as e:  # e.g. the template refuses the roles' order, or there is no template
        raise bad_request("messages", cap(f"messages: the chat template could not be applied: {e}", 300)) from None
    except Exception as e:  # noqa: BLE001 - jinja raises its own exception types
        if type(e).__module__.startswith("jinja2"):
            raise bad_request("messages", cap(f"messages: the chat template could not be applied: {e}", 300)) from None
        raise


def _check_prompt_len(ctx: ServerContext, ids: list[int], param: str) -> None:
    """A cheap early cap; the engine's own check gives the same message for anything that gets through."""
    if len(ids) >= ctx.max_model_len:
        raise bad_request(param, f"{param}: the prompt has {len(ids)} tokens, but the context window is "
                                 f"{ctx.max_model_len} tokens (at least one must be left to generate)")


async def _admit_and_run(ctx: ServerContext, request: Request, prepare) -> object:
    """Admit the request (503 while not ready), build its `Generation` with `prepare(body)`, and run it. The
    admission ticket is released here if preparing fails, and by `run` otherwise."""
    record = access_record(request.scope)
    ticket = ctx.admit()
    try:
        gen = await prepare(await request.body())
    except BaseException:
        ticket.release()
        raise
    return await run(ctx, request, ticket, record, gen)


def router(ctx: ServerContext) -> APIRouter:
    r = APIRouter()

    async def prepare_completion(body: bytes) -> Generation:
        req = parse_request(body, CompletionRequest)
        ctx.check_model(req.model)
        params = apply_model_limits(completion_params(req), ctx.vocab_size)
        ctx.check_queue()
        if isinstance(req.prompt, str):
            if not req.prompt:
                raise bad_request("prompt", "prompt: must not be empty")
            ids = await ctx.run_tokenizer(_encode, req.prompt)
        else:
            ids = req.prompt
        _check_prompt_len(ctx, ids, "prompt")
        fmt = CompletionFormatter(f"cmpl-{uuid.uuid4().hex}", ctx.model_name, int(time.time()),
                                  req.logprobs is not None, TokenTexts(ctx.tokenizer), req.include_usage)
        return Generation(fmt.request_id, ids, params, fmt, req.stream, req.include_usage, {})

    async def prepare_chat(body: bytes) -> Generation:
        req = parse_request(body, ChatCompletionRequest)
        ctx.check_model(req.model)
        params = apply_model_limits(chat_params(req), ctx.vocab_size)
        ctx.check_queue()
        ids = await chat_prompt_ids(ctx, req.chat_messages(), req.add_generation_prompt)
        _check_prompt_len(ctx, ids, "messages")
        fmt = ChatFormatter(f"chatcmpl-{uuid.uuid4().hex}", ctx.model_name, int(time.time()), req.logprobs,
                            TokenTexts(ctx.tokenizer), req.include_usage)
        return Generation(fmt.request_id, ids, params, fmt, req.stream, req.include_usage, chat_renames(req))

    @r.post("/v1/completions")
    async def completions(request: Request):
        return await _admit_and_run(ctx, request, prepare_completion)

    @r.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _admit_and_run(ctx, request, prepare_chat)

    return r
