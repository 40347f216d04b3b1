"""The results file (`--out`): a run or a sweep as plain JSON-ready dicts.

A run's dict holds the aggregates at the top level under fixed names (`completed`, `failed`, `duration_s`,
`request_throughput`, `output_throughput`, `total_token_throughput`, `goodput`, `ttft_ms`, `tpot_ms`,
`itl_ms`, `e2el_ms`, ...), then the workload, the load shape, the server's /metrics deltas and every
per-request record. A sweep's dict lists one run dict per point. docs/loadtest.md has the full schema.
The API key is never written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from loadtest.runner import LoadResult
from loadtest.sweep import SweepResult
from loadtest.workload import describe_workload

SCHEMA_VERSION = 1


def _number(x: float) -> float | str:
    """JSON has no infinity: an infinite rate is written as the string "inf"."""
    return "inf" if math.isinf(x) else x


def run_to_dict(result: LoadResult, *, with_requests: bool = True) -> dict:
    cfg = result.config
    out: dict = {
        "schema_version": SCHEMA_VERSION,
        "started_at": result.started_at,
        "model": result.model,
        "target": {"base_url": cfg.target.base_url, "endpoint": cfg.target.endpoint, "ignore_eos": cfg.target.ignore_eos},
    }
    out.update(result.stats.to_dict())
    out["slos_ms"] = {slo.metric: slo.limit_ms for slo in cfg.slos}
    out["workload"] = describe_workload(cfg.workload, cfg.target.endpoint)
    out["load_shape"] = {
        "request_rate": _number(cfg.shape.request_rate),
        "burstiness": cfg.shape.burstiness,
        "max_concurrency": cfg.shape.max_concurrency,
        "warmup_requests": cfg.shape.warmup_requests,
        "seed": cfg.seed,
    }
    out["warmup"] = {"requests": result.warmup.requests, "failed": result.warmup.failed}
    out["server_metrics"] = None if result.server_metrics is None else result.server_metrics.to_dict()
    if with_requests:
        out["requests"] = [r.to_dict() for r in result.records]
    return out


def sweep_to_dict(sweep: SweepResult) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "sweep": {"kind": sweep.spec.kind, "values": [_number(v) for v in sweep.spec.values]},
        "points": [run_to_dict(p) for p in sweep.points],
    }


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
