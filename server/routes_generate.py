"""POST /v1/completions and POST /v1/chat/completions: validate, tokenize off-loop, then `generation.run`.

Order of checks, cheapest first, each a distinct status: 503 not ready -> 400 body/fields -> 404 model ->
429 queue full (its places are held from here: `ServerContext.reserve_queue`) -> 400 prompt size in
characters -> 400 prompt (tokenizer, then the engine: vocabulary and context window).
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter
from starlette.requests import Request

from .chat_output import ChatParsing
from .context import QueueSlots, ServerContext
from .errors import bad_request
from .generation import Generation, run
from .guard import access_record
from .protocol import ChatCompletionRequest, CompletionRequest
from .responses import ChatFormatter, CompletionFormatter, TokenTexts
from .sampling import apply_model_limits, chat_params, chat_renames, completion_params, structured_renames
from .structured import compile_constraint, structured_spec
from .reasoning import thinking_disabled
from .tokenization import chat_prompt_ids, check_token_count, prompt_ids, prompt_text
from .tools import tool_plan


async def _admit_and_run(ctx: ServerContext, request: Request, prepare) -> object:
    """Admit the request (503 while not ready), build its `Generation` with `prepare(body)`, and run it. The
    admission ticket is released here if preparing fails, and by `run` otherwise."""
    record = access_record(request.scope)
    ticket = ctx.admit()
    slots: list[QueueSlots] = []  # the queue places `prepare` holds (released once submitted, or here)
    try:
        gen = await prepare(await request.body(), slots)
    except BaseException:
        for s in slots:
            s.release()
        ticket.release()
        raise
    return await run(ctx, request, ticket, record, gen)


async def _compile(ctx: ServerContext, req) -> None:
    spec, param = structured_spec(req)
    if spec is not None:
        await compile_constraint(ctx, spec, param)


def router(ctx: ServerContext) -> APIRouter:
    r = APIRouter()

    async def prepare_completion(body: bytes, slots: list[QueueSlots]) -> Generation:
        req = await ctx.parse(body, CompletionRequest)
        ctx.check_model(req.model)
        params = apply_model_limits(completion_params(req), ctx.vocab_size)
        slots.append(ctx.reserve_queue(params.n * len(req.prompt), "prompt" if len(req.prompt) > 1 else "n"))
        prompts = []
        for i, prompt in enumerate(req.prompt):
            param = "prompt" if len(req.prompt) == 1 else f"prompt[{i}]"
            if isinstance(prompt, str):
                if not prompt:
                    raise bad_request("prompt", f"{param}: must not be empty")
                ids = await prompt_ids(ctx, prompt)
            else:
                ids = prompt
            check_token_count(ctx, ids, "prompt")
            prompts.append(ids)
        await _compile(ctx, req)
        texts = TokenTexts(ctx.tokenizer)
        echo_texts = None
        if req.echo:
            echo_texts = [p if isinstance(p, str) else await prompt_text(ctx, p) for p in req.prompt]
        fmt = CompletionFormatter(f"cmpl-{uuid.uuid4().hex}", ctx.model_name, int(time.time()),
                                  req.logprobs is not None, texts, req.include_usage, n=params.n,
                                  echo_texts=echo_texts, echo_first_tokens=[p[0] for p in prompts],
                                  echo_k=req.logprobs or 0, prompt_logprobs=req.prompt_logprobs)
        return Generation(fmt.request_id, prompts, params, fmt, req.stream, req.include_usage,
                          structured_renames(req), req.cache_salt, slots[0])

    async def prepare_chat(body: bytes, slots: list[QueueSlots]) -> Generation:
        req = await ctx.parse(body, ChatCompletionRequest)
        ctx.check_model(req.model)
        # Tool schemas are converted to grammars by xgrammar (milliseconds): off the loop when there are any.
        plan = await ctx.run_cpu(tool_plan, req, ctx.chat.tool_parser) if req.tools else \
            tool_plan(req, ctx.chat.tool_parser)
        params = apply_model_limits(chat_params(req, plan.constraint), ctx.vocab_size)
        slots.append(ctx.reserve_queue(params.n, "n"))
        ids = await chat_prompt_ids(ctx, req.chat_messages(), req.add_generation_prompt, req.chat_template_kwargs,
                                    plan.template_tools)
        check_token_count(ctx, ids, "messages")
        if plan.constraint is not None:
            await compile_constraint(ctx, plan.constraint, "tool_choice")
        else:
            await _compile(ctx, req)
        reasoning = None if thinking_disabled(req.chat_template_kwargs) else ctx.chat.reasoning_parser
        fmt = ChatFormatter(f"chatcmpl-{uuid.uuid4().hex}", ctx.model_name, int(time.time()), req.logprobs,
                            TokenTexts(ctx.tokenizer), req.include_usage,
                            parsing=ChatParsing(reasoning, plan.parser, plan.max_calls,
                                                forced=plan.constraint is not None),
                            prompt_logprobs=req.prompt_logprobs)
        return Generation(fmt.request_id, [ids], params, fmt, req.stream, req.include_usage,
                          chat_renames(req, plan.constraint), req.cache_salt, slots[0])

    @r.post("/v1/completions")
    async def completions(request: Request):
        return await _admit_and_run(ctx, request, prepare_completion)

    @r.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _admit_and_run(ctx, request, prepare_chat)

    return r
