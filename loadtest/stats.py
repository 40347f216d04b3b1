"""Aggregation: from request records to the numbers a load test reports.

Only completed requests enter latency statistics and throughputs; failed ones are counted by their
`failure` key. With D the run's duration (first send to last completion) and C the completed requests:

    request_throughput     = |C| / D
    output_throughput      = sum(output_tokens over C) / D
    total_token_throughput = sum(prompt_tokens + output_tokens over C) / D
    goodput                = |{r in C : r meets every SLO}| / D      (None when no SLO was given)

A request meets `ttft:X` when TTFT <= X ms, `e2el:X` when E2EL <= X ms and `tpot:X` when TPOT <= X ms; a
one-token output has no TPOT and meets any TPOT objective. TTFT, TPOT and E2EL are one value per request;
ITL pools every gap of every request. `send_lag_ms` (actual minus planned send time, every request) shows
the client falling behind its own schedule: waiting for a concurrency slot, or a CPU too busy to keep up
with the rate. Percentiles use linear interpolation between closest ranks
(numpy's default), so p50 of [1, 2, 3, 4] is 2.5.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from loadtest.config import Slo
from loadtest.records import RequestRecord

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean and percentiles of one latency, in milliseconds; all None when there was no sample."""

    mean: float | None
    median: float | None
    p90: float | None
    p95: float | None
    p99: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(values: Iterable[float]) -> Summary:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return Summary(None, None, None, None, None)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, PERCENTILES))
    return Summary(float(arr.mean()), p50, p90, p95, p99)


def _ms(values: Iterable[float | None]) -> list[float]:
    return [v * 1e3 for v in values if v is not None]


def meets_slos(record: RequestRecord, slos: Sequence[Slo]) -> bool:
    """Whether a completed request meets every objective (a failed one meets none)."""
    if not record.ok:
        return False
    for slo in slos:
        value = {"ttft": record.ttft_s, "tpot": record.tpot_s, "e2el": record.e2el_s}[slo.metric]
        if value is None:
            if slo.metric == "tpot":
                continue  # one output token: no decode phase to judge
            return False
        if value * 1e3 > slo.limit_ms:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Aggregates:
    """The summary of one run."""

    completed: int
    failed: int
    failed_by: dict[str, int]  # failure key ("429", "ReadTimeout", ...) -> count
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens / s
    total_token_throughput: float  # (prompt + output) tokens / s
    goodput: float | None  # requests meeting every SLO / s; None without SLOs
    good_requests: int | None
    ttft_ms: Summary
    tpot_ms: Summary
    itl_ms: Summary
    e2el_ms: Summary
    send_lag_ms: Summary
    output_tokens_counted_from_chunks: int  # completed requests whose stream carried no usage

    def to_dict(self) -> dict:
        return asdict(self)  # nested Summary objects become dicts too


def aggregate(records: Sequence[RequestRecord], duration_s: float, slos: Sequence[Slo] = ()) -> Aggregates:
    """Summarize `records` of a run that lasted `duration_s` seconds."""
    if not duration_s > 0:
        raise ValueError(f"duration_s: must be > 0, got {duration_s}")
    done = [r for r in records if r.ok]
    failed_by = Counter(r.failure or "unknown" for r in records if not r.ok)
    out_tokens = sum(r.output_tokens or 0 for r in done)
    all_tokens = sum(r.total_tokens for r in done)
    good = sum(meets_slos(r, slos) for r in done) if slos else None
    return Aggregates(
        completed=len(done),
        failed=len(records) - len(done),
        failed_by=dict(sorted(failed_by.items())),
        duration_s=duration_s,
        total_input_tokens=all_tokens - out_tokens,
        total_output_tokens=out_tokens,
        request_throughput=len(done) / duration_s,
        output_throughput=out_tokens / duration_s,
        total_token_throughput=all_tokens / duration_s,
        goodput=None if good is None else good / duration_s,
        good_requests=good,
        ttft_ms=summarize(_ms(r.ttft_s for r in done)),
        tpot_ms=summarize(_ms(r.tpot_s for r in done)),
        itl_ms=summarize(_ms(gap for r in done for gap in r.itl_s)),
        e2el_ms=summarize(_ms(r.e2el_s for r in done)),
        send_lag_ms=summarize(_ms(r.sent_s - r.scheduled_s for r in records)),
        output_tokens_counted_from_chunks=sum(r.output_tokens_source == "chunks" for r in done),
    )
