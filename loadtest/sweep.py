"""Sweeps: the same workload at several request rates or concurrency limits -> a latency-throughput curve.

    --sweep 1,2,4,inf              one run per request rate (requests/s; inf = all at once)
    --sweep concurrency:1,4,16     one run per max-concurrency limit, at the configured request rate

Every point replays the same seeded workload. Warm-up requests are sent before the first point only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from loadtest.config import LoadConfig
from loadtest.runner import LoadResult, Progress, run_load

SweepKind = Literal["rate", "concurrency"]


@dataclass(frozen=True, slots=True)
class SweepSpec:
    kind: SweepKind
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("sweep: needs at least one value")
        for v in self.values:
            if self.kind == "rate" and not v > 0:
                raise ValueError(f"sweep: request rates must be > 0 (or inf), got {v:g}")
            if self.kind == "concurrency" and not (math.isfinite(v) and v >= 1 and v == int(v)):
                raise ValueError(f"sweep: concurrency limits must be integers >= 1, got {v:g}")

    @staticmethod
    def parse(text: str) -> "SweepSpec":
        kind: SweepKind = "rate"
        body = text.strip()
        for prefix in ("concurrency:", "rate:"):
            if body.startswith(prefix):
                kind, body = prefix[:-1], body[len(prefix):]  # type: ignore[assignment]
        try:
            values = tuple(float(v) for v in body.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"sweep: cannot read {text!r}; use e.g. 1,2,4,inf or concurrency:1,4,16") from None
        return SweepSpec(kind, values)

    def label(self, value: float) -> str:
        if self.kind == "rate":
            return "rate inf" if math.isinf(value) else f"rate {value:g}/s"
        return f"concurrency {int(value)}"

    def apply(self, config: LoadConfig, value: float, first: bool) -> LoadConfig:
        """`config` with this point's rate or concurrency, and warm-up only at the first point."""
        shape = config.shape
        if self.kind == "rate":
            shape = dataclasses.replace(shape, request_rate=value)
        else:
            shape = dataclasses.replace(shape, max_concurrency=int(value))
        if not first:
            shape = dataclasses.replace(shape, warmup_requests=0)
        return dataclasses.replace(config, shape=shape)


@dataclass(frozen=True, slots=True)
class SweepResult:
    spec: SweepSpec
    points: tuple[LoadResult, ...]  # one per value, in the order given


async def run_sweep(config: LoadConfig, spec: SweepSpec, *, progress: Progress | None = None) -> SweepResult:
    points = []
    for i, value in enumerate(spec.values):
        points.append(await run_load(spec.apply(config, value, i == 0), progress=progress, label=spec.label(value)))
    return SweepResult(spec, tuple(points))


def run_sweep_sync(config: LoadConfig, spec: SweepSpec, *, progress: Progress | None = None) -> SweepResult:
    return asyncio.run(run_sweep(config, spec, progress=progress))
