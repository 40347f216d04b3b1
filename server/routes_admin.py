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
from .parsing import parse_request
from .protocol import DetokenizeRequest, TokenizeRequest
from .routes_generate import chat_prompt_ids


def _encode(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids)


def _token_strs(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


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
        ctx.require_ready()
        req = parse_request(await request.body(), TokenizeRequest)
        ctx.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("prompt", "prompt: send exactly one of prompt and messages")
        if req.messages is not None:
            ids = await chat_prompt_ids(ctx, [{"role": m.role, "content": m.content} for m in req.messages],
                                        req.add_generation_prompt)
        else:
            ids = await ctx.run_tokenizer(_encode, req.prompt, req.add_special_tokens)
        body = {"count": len(ids), "max_model_len": ctx.max_model_len, "tokens": ids, "token_strs": None}
        if req.return_token_strs:
            body["token_strs"] = await ctx.run_tokenizer(_token_strs, ids)
        return body

    @r.post("/detokenize")
    async def detokenize(request: Request):
        ctx.require_ready()
        req = parse_request(await request.body(), DetokenizeRequest)
        ctx.check_model(req.model)
        if len(req.tokens) > ctx.max_model_len:
            raise bad_request("tokens", f"tokens: at most {ctx.max_model_len} (the context window), "
                                        f"got {len(req.tokens)}")
        bad = next((t for t in req.tokens if not 0 <= t < ctx.vocab_size), None)
        if bad is not None:
            raise bad_request("tokens", f"tokens: token id {bad} is outside the vocabulary [0, {ctx.vocab_size})")
        return {"prompt": await ctx.run_tokenizer(_decode, req.tokens)}

    return r
