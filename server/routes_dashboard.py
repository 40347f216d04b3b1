"""GET /dashboard (a live page of the paged KV cache) and GET /dashboard/state (the JSON it reads).

The page is three static files in server/static/ (HTML, JS, CSS: no build step, no CDN, no library), served by
kvserve itself; it polls /dashboard/state about once a second. Both sit behind the API key like every other
route; a browser sends it as HTTP Basic credentials (any user name, the key as the password: server/guard.py).

/dashboard/state combines:
- `cache`: a bounded snapshot of the block pool and the queues (engine.cache_view), taken on the engine thread
  between two steps (the engine belongs to that thread; `EngineLoop.call`);
- `recent`: the last minute of steps, TTFT, TPOT, throughput and utilization (server/recent.py);
- `peak`: what utilization is measured against (engine.tools.peaks), or null.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from engine.cache_view import cache_snapshot

from .context import ServerContext
from .errors import APIError, unavailable

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
SNAPSHOT_TIMEOUT_S = 30.0  # one engine step (a long prefill on a CPU) may run before the snapshot


def router(ctx: ServerContext) -> APIRouter:
    r = APIRouter()
    files = {name: (STATIC / name).read_bytes() for name in ("dashboard.html", *ASSETS)}
    no_store = {"Cache-Control": "no-store"}

    @r.get("/dashboard")
    async def page():
        return Response(files["dashboard.html"], media_type="text/html; charset=utf-8", headers=no_store)

    @r.get("/dashboard/state")
    async def state():
        ctx.require_ready()
        if ctx.engine_loop is None:
            raise unavailable("the engine is not running")
        try:
            snapshot = await asyncio.wait_for(ctx.engine_loop.call(cache_snapshot), SNAPSHOT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise unavailable("the engine did not answer in time; it may be running a long step") from None
        body = {
            "time": time.time(),
            "model": ctx.model_name,
            "phase": ctx.phase.value,
            "max_model_len": ctx.max_model_len,
            "cache": snapshot.to_dict(),
            "recent": ctx.recent.summary(ctx.peak),
        }
        return _json(body, no_store)

    @r.get("/dashboard/{name}")
    async def asset(name: str):
        if name not in ASSETS:
            raise APIError(404, f"no route {('/dashboard/' + name)[:200]!r}")
        return Response(files[name], media_type=ASSETS[name], headers=no_store)

    return r


def _json(body: dict, headers: dict) -> Response:
    # allow_nan=False: a NaN would make the page's JSON.parse fail; the window reports None instead
    return Response(json.dumps(body, allow_nan=False, separators=(",", ":")), media_type="application/json",
                    headers=headers)
