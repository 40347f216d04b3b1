"""The server's own view: scrape Prometheus `/metrics` before and after a run and report the deltas.

Metric names are vLLM's, under the prefix `kvserve:` (or `vllm:` when the server is vLLM). Samples are
summed over labels (model name, engine index), except `request_success_total`, which is also kept per
`finished_reason`. Counters that a server does not export come back as None, not 0.

A server may count a request a moment after its stream ends, so the scrape after a run is repeated
(briefly, see `settled_delta`) until the server has counted at least as many successes as the client saw.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

PREFIXES = ("kvserve:", "vllm:")

# ServerMetricsDelta field -> sample names (without prefix) tried in order, older vLLM names last
_COUNTERS = {
    "preemptions": ("num_preemptions_total",),
    "prefix_cache_queries": ("prefix_cache_queries_total", "gpu_prefix_cache_queries_total"),
    "prefix_cache_hits": ("prefix_cache_hits_total", "gpu_prefix_cache_hits_total"),
    "queue_time_sum_s": ("request_queue_time_seconds_sum",),
    "queue_time_count": ("request_queue_time_seconds_count",),
    "prompt_tokens": ("prompt_tokens_total",),
    "generation_tokens": ("generation_tokens_total",),
    "spec_decode_num_drafts": ("spec_decode_num_drafts_total",),
    "spec_decode_num_draft_tokens": ("spec_decode_num_draft_tokens_total",),
    "spec_decode_num_accepted_tokens": ("spec_decode_num_accepted_tokens_total",),
}
_SUCCESS = "request_success_total"
# counters by label: ServerMetricsDelta field -> (sample name without prefix, label)
_BY_LABEL = {
    "model_flops_by_phase": ("model_flops_total", "phase"),
    "model_bytes_by_phase": ("model_bytes_total", "phase"),
    "step_seconds_by_kind": ("engine_step_seconds_total", "kind"),
    "step_flops_by_kind": ("engine_step_flops_total", "kind"),
    "step_bytes_by_kind": ("engine_step_bytes_total", "kind"),
    "steps_by_kind": ("engine_steps_total", "kind"),
}
_PEAKS = {"peak_flops": "peak_flops_per_second", "peak_bandwidth": "peak_memory_bandwidth_bytes_per_second"}


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every sample of one scrape: (sample name, sorted labels) -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @staticmethod
    def parse(text: str) -> "MetricsSnapshot":
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return MetricsSnapshot(samples)

    def prefix(self) -> str | None:
        """The first of PREFIXES that any sample name starts with."""
        names = {name for name, _ in self.samples}
        return next((p for p in PREFIXES if any(n.startswith(p) for n in names)), None)

    def total(self, name: str) -> float | None:
        """Sum of every sample called `name` over all labels; None when there is none."""
        values = [v for (n, _), v in self.samples.items() if n == name]
        return sum(values) if values else None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), v in self.samples.items():
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


@dataclass(frozen=True, slots=True)
class ServerMetricsDelta:
    """After minus before, for the counters a load test cares about. None = not exported by the server."""

    prefix: str
    preemptions: float | None = None
    prefix_cache_queries: float | None = None  # tokens looked up in the prefix cache
    prefix_cache_hits: float | None = None  # tokens found there
    queue_time_sum_s: float | None = None
    queue_time_count: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    requests_succeeded: float | None = None
    spec_decode_num_drafts: float | None = None  # speculative decoding (vLLM's counters)
    spec_decode_num_draft_tokens: float | None = None
    spec_decode_num_accepted_tokens: float | None = None
    requests_by_finished_reason: dict[str, float] = field(default_factory=dict)
    # kvserve's roofline counters (docs/metrics.md): empty when the server does not export them
    model_flops_by_phase: dict[str, float] = field(default_factory=dict)
    model_bytes_by_phase: dict[str, float] = field(default_factory=dict)
    step_seconds_by_kind: dict[str, float] = field(default_factory=dict)
    step_flops_by_kind: dict[str, float] = field(default_factory=dict)
    step_bytes_by_kind: dict[str, float] = field(default_factory=dict)
    steps_by_kind: dict[str, float] = field(default_factory=dict)
    peak_flops: float | None = None  # the server's declared peak (a gauge, read after the run); None if unknown
    peak_bandwidth: float | None = None

    @property
    def busy_seconds(self) -> float | None:
        return sum(self.step_seconds_by_kind.values()) if self.step_seconds_by_kind else None

    @property
    def mfu_busy(self) -> float | None:
        """Model FLOPs over the run's engine-step time / the peak FLOP/s (idle time excluded)."""
        busy = self.busy_seconds
        if not busy or not self.peak_flops:
            return None
        return sum(self.step_flops_by_kind.values()) / busy / self.peak_flops

    @property
    def mbu_busy(self) -> float | None:
        busy = self.busy_seconds
        if not busy or not self.peak_bandwidth:
            return None
        return sum(self.step_bytes_by_kind.values()) / busy / self.peak_bandwidth

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        """hits / queries over the run (token-weighted), None when nothing was looked up."""
        if not self.prefix_cache_queries or self.prefix_cache_hits is None:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries

    @property
    def spec_acceptance_rate(self) -> float | None:
        """Accepted / proposed draft tokens over the run; None when nothing was proposed."""
        if not self.spec_decode_num_draft_tokens or self.spec_decode_num_accepted_tokens is None:
            return None
        return self.spec_decode_num_accepted_tokens / self.spec_decode_num_draft_tokens

    @property
    def spec_mean_accepted_length(self) -> float | None:
        """Tokens per verified draft: 1 (the token sampled after the accepted run) + accepted / drafts."""
        if not self.spec_decode_num_drafts or self.spec_decode_num_accepted_tokens is None:
            return None
        return 1 + self.spec_decode_num_accepted_tokens / self.spec_decode_num_drafts

    @property
    def mean_queue_time_s(self) -> float | None:
        if not self.queue_time_count or self.queue_time_sum_s is None:
            return None
        return self.queue_time_sum_s / self.queue_time_count

    def to_dict(self) -> dict:
        return {
            "prefix": self.prefix,
            "preemptions": self.preemptions,
            "prefix_cache_queries": self.prefix_cache_queries,
            "prefix_cache_hits": self.prefix_cache_hits,
            "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
            "mean_queue_time_ms": None if self.mean_queue_time_s is None else self.mean_queue_time_s * 1e3,
            "queue_time_count": self.queue_time_count,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "requests_succeeded": self.requests_succeeded,
            "spec_decode_num_drafts": self.spec_decode_num_drafts,
            "spec_decode_num_draft_tokens": self.spec_decode_num_draft_tokens,
            "spec_decode_num_accepted_tokens": self.spec_decode_num_accepted_tokens,
            "spec_acceptance_rate": self.spec_acceptance_rate,
            "spec_mean_accepted_length": self.spec_mean_accepted_length,
            "requests_by_finished_reason": dict(self.requests_by_finished_reason),
            "model_flops_by_phase": dict(self.model_flops_by_phase),
            "model_bytes_by_phase": dict(self.model_bytes_by_phase),
            "step_seconds_by_kind": dict(self.step_seconds_by_kind),
            "step_flops_by_kind": dict(self.step_flops_by_kind),
            "step_bytes_by_kind": dict(self.step_bytes_by_kind),
            "steps_by_kind": dict(self.steps_by_kind),
            "peak_flops": self.peak_flops,
            "peak_bandwidth": self.peak_bandwidth,
            "mfu_busy": self.mfu_busy,
            "mbu_busy": self.mbu_busy,
        }


def metrics_delta(before: MetricsSnapshot, after: MetricsSnapshot) -> ServerMetricsDelta | None:
    """The deltas between two scrapes, or None when neither carries kvserve:/vllm: metrics."""
    prefix = after.prefix() or before.prefix()
    if prefix is None:
        return None

    def delta(names: tuple[str, ...]) -> float | None:
        for name in names:
            a = after.total(prefix + name)
            if a is not None:
                return a - (before.total(prefix + name) or 0.0)
        return None

    b_reason = before.by_label(prefix + _SUCCESS, "finished_reason")
    a_reason = after.by_label(prefix + _SUCCESS, "finished_reason")
    by_reason = {k: v - b_reason.get(k, 0.0) for k, v in sorted(a_reason.items())}
    def delta_by(name: str, label: str) -> dict[str, float]:
        b, a = before.by_label(prefix + name, label), after.by_label(prefix + name, label)
        return {k: v - b.get(k, 0.0) for k, v in sorted(a.items())}

    def peak(name: str) -> float | None:
        value = after.total(prefix + name)
        return value if value is not None and math.isfinite(value) and value > 0 else None

    return ServerMetricsDelta(
        prefix=prefix,
        **{key: delta(names) for key, names in _COUNTERS.items()},
        requests_succeeded=sum(by_reason.values()) if a_reason else None,
        requests_by_finished_reason=by_reason,
        **{key: delta_by(name, label) for key, (name, label) in _BY_LABEL.items()},
        **{key: peak(name) for key, name in _PEAKS.items()},
    )


async def scrape(http: httpx.AsyncClient, root: str, headers: dict[str, str] | None = None) -> MetricsSnapshot | None:
    """GET {root}/metrics; None when the server has no such endpoint or it cannot be read."""
    try:
        resp = await http.get(root + "/metrics", headers=headers or {})
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        return MetricsSnapshot.parse(resp.text)
    except ValueError:
        return None


async def settled_delta(http: httpx.AsyncClient, root: str, headers: dict[str, str], before: MetricsSnapshot,
                        completed: int, *, timeout_s: float = 2.0, interval_s: float = 0.05) -> ServerMetricsDelta | None:
    """Scrape until the server's success count has grown by `completed` since `before`, or `timeout_s` passed.

    The last delta is returned either way; a server without a success counter is scraped once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        after = await scrape(http, root, headers)
        delta = None if after is None else metrics_delta(before, after)
        if (delta is None or delta.requests_succeeded is None or delta.requests_succeeded >= completed
                or time.monotonic() >= deadline):
            return delta
        await asyncio.sleep(interval_s)
