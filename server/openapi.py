"""The OpenAPI document (`GET /openapi.json`) and its Swagger UI (`GET /docs`), both behind the API key.

The routes read their bodies themselves (strict JSON, then the pydantic models of `protocol.py`), so
FastAPI cannot see what they take; the document is therefore built here, from a table of the routes and
the same pydantic models that parse the requests (`protocol.py`) and describe the responses
(`response_models.py`). Every route lists each status it can answer with, and every error is the one
envelope. A streamed answer (`"stream": true`) is `text/event-stream`, each event's `data` a `*Chunk`, an
error, or `[DONE]` (OpenAPI 3.2's way of describing event streams, which schemathesis checks). Once the
model is loaded, the document also states the served model's name, its vocabulary (token ids) and its
context window (`max_tokens`, prompt lengths): the `x-` marks in `protocol.py`. schemathesis fuzzes the live
server against this document in tests/server/test_schemathesis.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import protocol as req
from . import response_models as res
from .context import Phase, ServerContext

REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "invalid request: JSON, a field's type or range, unknown or unsupported fields, prompt too long",
    401: "missing or wrong API key",
    404: "unknown model",
    408: "the request body did not arrive in time",
    413: "request body over the size limit",
    415: "a request body whose Content-Type is not JSON",
    429: "too many requests waiting for the engine (Retry-After)",
    431: "request line and headers over the size limit",
    500: "the engine failed or hung while running the request",
    503: "not ready: loading, draining, or the engine has failed",
}
_ANY_ROUTE = (400, 401, 408, 413, 431, 503)
_POST = _ANY_ROUTE + (404, 415)  # 404: a model name that is not the served one


@dataclass(frozen=True)
class ModelFacts:
    name: str
    vocab_size: int
    max_model_len: int


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    ok: type[BaseModel] | None  # the 200 body (None: see `ok_content`)
    request: type[BaseModel] | None = None
    stream: type[BaseModel] | None = None  # the event schema, when the route can stream
    errors: tuple[int, ...] = _ANY_ROUTE
    ok_content: str | None = None  # a non-JSON 200 (media type)
    open: bool = False  # no API key needed


ROUTES = (
    Route("post", "/v1/completions", "Text completion", res.CompletionResponse, req.CompletionRequest,
          res.CompletionChunk, _POST + (429, 500)),
    Route("post", "/v1/chat/completions", "Chat completion (the model's chat template)", res.ChatCompletionResponse,
          req.ChatCompletionRequest, res.ChatCompletionChunk, _POST + (429, 500)),
    Route("post", "/tokenize", "Text or chat messages to token ids", res.TokenizeResponse, req.TokenizeRequest,
          errors=_POST),
    Route("post", "/detokenize", "Token ids to text", res.DetokenizeResponse, req.DetokenizeRequest, errors=_POST),
    Route("get", "/v1/models", "The served model", res.ModelList),
    Route("get", "/health", "200 when ready, 503 otherwise (no API key needed)", res.Health, open=True),
    Route("get", "/metrics", "Prometheus metrics (docs/metrics.md)", None, ok_content="text/plain"),
    Route("get", "/dashboard", "The live page of the paged KV cache (a browser may send the key as Basic "
          "credentials)", None, ok_content="text/html"),
    Route("get", "/dashboard/state", "What the dashboard shows, as JSON", res.DashboardState),
    Route("get", "/dashboard/dashboard.js", "The dashboard's script", None, ok_content="text/javascript"),
    Route("get", "/dashboard/dashboard.css", "The dashboard's style sheet", None, ok_content="text/css"),
)


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _sse_event(chunk: type[BaseModel]) -> dict:
    """One server-sent event: its `data` is a chunk, an error (then the stream ends), or the final [DONE]."""
    payload = {"type": "string", "contentMediaType": "application/json",
               "contentSchema": {"anyOf": [_ref(chunk), _ref(res.ErrorResponse)]}}
    return {"type": "object", "required": ["data"],
            "description": f"with \"stream\": true, each event's data is a {chunk.__name__}, then [DONE]",
            "properties": {"event": {"type": "string"}, "data": {"anyOf": [{"const": "[DONE]"}, payload]}}}


def _fill_in(node: Any, facts: ModelFacts) -> None:
    """Replace the `x-` marks of `protocol.py` with the loaded model's facts."""
    if isinstance(node, list):
        for item in node:
            _fill_in(item, facts)
        return
    if not isinstance(node, dict):
        return
    if node.pop("x-token-id", False):
        node["maximum"] = facts.vocab_size - 1
    if node.pop("x-context-bound", False):
        node["maximum"] = facts.max_model_len - 1
    if node.pop("x-context-length", False):
        node["maxItems"] = facts.max_model_len
    if node.pop("x-prompt-length", False):
        node["maxItems"] = facts.max_model_len - 1  # at least one token must be left to generate
    if node.pop("x-served-model", False):
        node["anyOf"] = [{"const": facts.name}, {"type": "null"}]
    for value in node.values():
        _fill_in(value, facts)


def _operation(r: Route, secured: bool) -> dict:
    if r.ok_content is not None:
        ok = {"description": r.summary, "content": {r.ok_content: {"schema": {"type": "string"}}}}
    else:
        content = _json(_ref(r.ok))
        if r.stream is not None:
            content["text/event-stream"] = {"schema": _sse_event(r.stream)}
        ok = {"description": "OK", "content": content}
    statuses = {s for s in r.errors if secured or s != 401}
    if r.open:
        statuses -= {401}
    responses = {"200": ok}
    for status in sorted(statuses):
        responses[str(status)] = {"description": _ERRORS[status], "content": _json(_ref(res.ErrorResponse))}
    if r.path == "/health":  # its 503 is a Health body, not an error
        responses["503"] = {"description": "loading, draining or failed", "content": _json(_ref(res.Health))}
    op = {"summary": r.summary, "operationId": f"{r.method}_{r.path.strip('/').replace('/', '_')}",
          "responses": responses}
    if r.request is not None:
        op["requestBody"] = {"required": True, "content": _json(_ref(r.request))}
    if secured and r.open:
        op["security"] = []
    return op


def openapi_document(title: str, version: str, secured: bool, facts: ModelFacts | None = None) -> dict:
    models = {m for r in ROUTES for m in (r.ok, r.request, r.stream) if m is not None} | {res.ErrorResponse}
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                 ref_template=REF)
    if facts is not None:
        _fill_in(defs, facts)
    paths: dict[str, dict] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method] = _operation(r, secured)
    doc = {"openapi": "3.1.0", "info": {"title": title, "version": version,
                                        "description": "OpenAI-compatible LLM server; see docs/api.md"},
           "paths": paths, "components": {"schemas": defs.get("$defs", {})}}
    if secured:
        # Basic: the key as the password, any user name (what a browser can send when it opens /dashboard)
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"},
                                                "basic": {"type": "http", "scheme": "basic"}}
        doc["security"] = [{"bearer": []}, {"basic": []}]
    return doc


def router(ctx: ServerContext, version: str) -> APIRouter:
    r = APIRouter()
    secured = ctx.config.api_key is not None
    loaded: list[dict] = []  # the document with the model's facts, built once they are known

    @r.get("/openapi.json", include_in_schema=False)
    async def openapi_json():
        if loaded:
            return JSONResponse(loaded[0])
        if ctx.phase is Phase.LOADING:
            return JSONResponse(openapi_document("kvserve", version, secured))
        facts = ModelFacts(ctx.model_name, ctx.vocab_size, ctx.max_model_len)
        loaded.append(openapi_document("kvserve", version, secured, facts))
        return JSONResponse(loaded[0])

    @r.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="kvserve API")

    return r
