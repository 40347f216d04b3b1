"""The FastAPI application: lifespan (start/stop the engine thread), error handlers, routes, middleware.

Every error leaves in the OpenAI envelope: our `APIError`s, FastAPI's request validation (400, never 422),
Starlette's 404/405 (with its `Allow` header), and anything unexpected (500, details only in the server
log; `guard.Guard` answers those itself so that the connection stays usable). uvicorn's own errors, for
requests that never reach the app, are enveloped by `http_protocol`.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from . import openapi, routes_admin, routes_dashboard, routes_generate
from .context import ServerContext
from .errors import APIError
from .guard import Guard, GuardLimits
from .parsing import validation_error

logger = logging.getLogger(__name__)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kvserve")
    except PackageNotFoundError:
        return "0+unknown"


def build_app(ctx: ServerContext) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.start()
        try:
            yield
        finally:
            await ctx.close()

    app = FastAPI(title="kvserve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        return error_response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no route {request.url.path[:200]!r}",
                   405: f"method {request.method} is not allowed on {request.url.path[:200]!r}"}
        return error_response(APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)),
                                       headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error", code="internal_error"))

    app.include_router(routes_admin.router(ctx))
    app.include_router(routes_generate.router(ctx))
    app.include_router(routes_dashboard.router(ctx))
    app.include_router(openapi.router(ctx, version=_version()))
    app.add_middleware(Guard, limits=GuardLimits.of(ctx.config))
    app.state.ctx = ctx
    return app
