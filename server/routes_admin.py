"""GET /health, GET /metrics, GET /v1/models, POST /tokenize, POST /detokenize.

/health is the truth about the server's phase: 200 only when ready; 503 while loading, draining or after
an engine failure. It is the one route that needs no API key.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from .context import Phase, ServerContext
from .errors import bad_request, unavailable
from .protocol import DetokenizeRequest, TokenizeRequest
from .tokenization import chat_prompt_ids, detokenize_body, prompt_ids, tokenize_body

JSON = "application/json"


def router(ctx: ServerContext) -> APIRouter:
    r = APIRouter()
    started = int(time.time())

    @r.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return JSONResponse({"status": ctx.phase.value}, status_code=200 if ctx.phase is Phase.READY else 503)

    @r.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics():
        if ctx.metrics is None:
            raise unavailable("the model is still loading")
        return Response(ctx.metrics.render(), media_type=ctx.metrics.CONTENT_TYPE)

    @r.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models():
        ctx.require_ready()
        return {"object": "list", "data": [{"id": ctx.model_name, "object": "model", "created": started,
                                             "owned_by": "kvserve", "max_model_len": ctx.max_model_len}]}

    @r.post("/tokenize")
    async def tokenize(request: Request):
        """At most the context window's worth of tokens: the prompt-size limit bounds the tokenizer's work,
        this bounds the response (a longer text is refused, with its count)."""
        ctx.require_ready()
        req = await ctx.parse(await request.body(), TokenizeRequest)
        ctx.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("prompt", "prompt: send exactly one of prompt and messages")
        if req.messages is not None:
            param = "messages"
            ids = await chat_prompt_ids(ctx, [m.template_input() for m in req.messages], req.add_generation_prompt)
        else:
            param = "prompt"
            ids = await prompt_ids(ctx, req.prompt, add_special_tokens=req.add_special_tokens)
        if len(ids) > ctx.max_model_len:
            raise bad_request(param, f"{param}: {len(ids)} tokens, more than the context window of "
                                     f"{ctx.max_model_len} tokens that /tokenize returns", code="too_many_tokens")
        size = len(ids) * (8 if req.return_token_strs else 1)
        body = await ctx.run_tokenizer(size, tokenize_body, ids, ctx.max_model_len, req.return_token_strs)
        return Response(body, media_type=JSON)

    @r.post("/detokenize")
    async def detokenize(request: Request):
        ctx.require_ready()
        req = await ctx.parse(await request.body(), DetokenizeRequest)
        ctx.check_model(req.model)
        if len(req.tokens) > ctx.max_model_len:
            raise bad_request("tokens", f"tokens: at most {ctx.max_model_len} (the context window), "
                                        f"got {len(req.tokens)}")
        bad = next((t for t in req.tokens if not 0 <= t < ctx.vocab_size), None)
        if bad is not None:
            raise bad_request("tokens", f"tokens: token id {bad} is outside the vocabulary [0, {ctx.vocab_size})")
        return Response(await ctx.run_tokenizer(len(req.tokens) * 4, detokenize_body, req.tokens), media_type=JSON)

    return r
