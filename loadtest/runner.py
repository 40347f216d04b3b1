"""The asyncio orchestration of one run: resolve the model, warm up, scrape, send on schedule, aggregate.

In-process use (a test against a real server does exactly this):

    result = await run_load(config)      # inside a running event loop
    result = run_load_sync(config)       # from synchronous code

Order of events:

    GET /v1/models (if no model given) -> warm-up requests (awaited, not recorded)
    -> scrape /metrics -> t0 -> request i leaves at t0 + offset[i] (waiting for a concurrency slot if
    limited) -> all done: duration = now - t0 -> aggregate -> scrape /metrics (until the server's counts settle)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass
from typing import Protocol

import httpx
import numpy as np

from loadtest.arrivals import arrival_offsets
from loadtest.client import headers_for, send_request
from loadtest.config import LoadConfig, Target
from loadtest.metrics_scrape import ServerMetricsDelta, scrape, settled_delta
from loadtest.records import RequestRecord
from loadtest.stats import Aggregates, aggregate
from loadtest.workload import RequestSpec, build_workload

# Independent seeded streams, so that changing the load shape never changes the prompts.
_WORKLOAD_STREAM, _WARMUP_STREAM, _ARRIVAL_STREAM = 0, 1, 2


class Progress(Protocol):
    """Told about every measured request as it finishes (warm-up requests are not reported)."""

    def start(self, label: str, total: int) -> None: ...

    def advance(self, record: RequestRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class WarmupSummary:
    requests: int
    failed: int


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Everything one run produced."""

    config: LoadConfig
    model: str
    started_at: str  # ISO 8601 wall-clock time of t0
    records: tuple[RequestRecord, ...]  # in request-index order
    stats: Aggregates
    warmup: WarmupSummary
    server_metrics: ServerMetricsDelta | None  # None: no /metrics with kvserve:/vllm: names (or not asked)


class ModelLookupError(RuntimeError):
    """GET /v1/models failed or listed no model."""


async def resolve_model(http: httpx.AsyncClient, target: Target) -> str:
    """`target.model`, or else the first id the server lists at GET /v1/models."""
    if target.model:
        return target.model
    try:
        resp = await http.get(target.root + "/v1/models", headers=headers_for(target))
        resp.raise_for_status()
        return resp.json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ModelLookupError(
            f"model: no --model given and GET {target.root}/v1/models gave none ({type(e).__name__}: {e})"
        ) from None


def new_http_client(target: Target) -> httpx.AsyncClient:
    # No connection-pool limit: a pooled request would wait inside httpx after its send time was taken.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=httpx.Timeout(target.timeout_s, connect=min(target.timeout_s, 30.0)), limits=limits)


async def _warm_up(http: httpx.AsyncClient, config: LoadConfig, model: str, specs: list[RequestSpec]) -> WarmupSummary:
    limit = asyncio.Semaphore(config.shape.max_concurrency or max(len(specs), 1))
    t0 = time.perf_counter()

    async def one(i: int, spec: RequestSpec) -> RequestRecord:
        async with limit:
            return await send_request(http, config.target, model, spec, i, t0, 0.0)

    records = await asyncio.gather(*(one(i, s) for i, s in enumerate(specs)))
    return WarmupSummary(len(records), sum(not r.ok for r in records))


async def _measure(http: httpx.AsyncClient, config: LoadConfig, model: str, specs: list[RequestSpec],
                   offsets: np.ndarray, progress: Progress | None) -> tuple[list[RequestRecord], float, float]:
    limit = asyncio.Semaphore(config.shape.max_concurrency) if config.shape.max_concurrency else contextlib.nullcontext()
    t0 = time.perf_counter()
    wall_t0 = time.time()

    async def one(i: int) -> RequestRecord:
        async with limit:
            record = await send_request(http, config.target, model, specs[i], i, t0, float(offsets[i]))
        if progress is not None:
            progress.advance(record)
        return record

    tasks = []
    for i, offset in enumerate(offsets):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    records = await asyncio.gather(*tasks)
    return list(records), time.perf_counter() - t0, wall_t0


async def run_load(config: LoadConfig, *, progress: Progress | None = None, label: str = "requests") -> LoadResult:
    """Run one load test against `config.target` and return its records and aggregates."""
    specs = build_workload(config.workload, config.target.endpoint, np.random.default_rng([config.seed, _WORKLOAD_STREAM]))
    warm_specs = build_workload(config.workload, config.target.endpoint,
                                np.random.default_rng([config.seed, _WARMUP_STREAM]), config.shape.warmup_requests)
    offsets = arrival_offsets(len(specs), config.shape.request_rate, config.shape.burstiness,
                              np.random.default_rng([config.seed, _ARRIVAL_STREAM]))
    async with new_http_client(config.target) as http:
        model = await resolve_model(http, config.target)
        warmup = await _warm_up(http, config, model, warm_specs)
        headers = headers_for(config.target)
        before = await scrape(http, config.target.root, headers) if config.scrape_metrics else None
        if progress is not None:
            progress.start(label, len(specs))
        records, duration, wall_t0 = await _measure(http, config, model, specs, offsets, progress)
        stats = aggregate(records, duration, config.slos)
        server = (await settled_delta(http, config.target.root, headers, before, stats.completed)
                  if before is not None else None)
    return LoadResult(
        config=config,
        model=model,
        started_at=dt.datetime.fromtimestamp(wall_t0, dt.timezone.utc).isoformat(timespec="seconds"),
        records=tuple(records),
        stats=stats,
        warmup=warmup,
        server_metrics=server,
    )


def run_load_sync(config: LoadConfig, *, progress: Progress | None = None, label: str = "requests") -> LoadResult:
    """`run_load` from synchronous code (starts and closes its own event loop)."""
    return asyncio.run(run_load(config, progress=progress, label=label))
