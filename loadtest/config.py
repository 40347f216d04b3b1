"""What a load test is asked to do: one frozen dataclass per concern, validated on construction.

`LoadConfig` bundles the server (`Target`), the requests (`WorkloadConfig`), when they are sent
(`LoadShape`) and the latency objectives (`Slo`). The CLI builds one in `loadtest.cli.config_from_args`;
a test builds one directly and hands it to `loadtest.runner.run_load`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loadtest.lengths import LengthSpec

Endpoint = Literal["completions", "chat"]
SloMetric = Literal["ttft", "tpot", "e2el"]
SLO_METRICS: tuple[str, ...] = ("ttft", "tpot", "e2el")


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test. `base_url` is the server root (a trailing `/v1` is accepted and dropped)."""

    base_url: str
    endpoint: Endpoint = "completions"
    model: str | None = None  # None: ask GET /v1/models and take the first id
    api_key: str | None = None
    timeout_s: float = 600.0
    ignore_eos: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {self.base_url!r}")
        if self.endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint: must be completions or chat, got {self.endpoint!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {self.timeout_s}")

    @property
    def root(self) -> str:
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    @property
    def url(self) -> str:
        path = "/v1/completions" if self.endpoint == "completions" else "/v1/chat/completions"
        return self.root + path


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Which prompts are sent and how many tokens each asks for.

    Without `dataset`, prompts are random: token-id lists for the completions endpoint, random words for
    chat. With `prefix_groups` > 0 every prompt is its group's shared prefix of `prefix_len` tokens
    followed by a distinct random suffix whose length is drawn from `input_len`.
    """

    num_requests: int = 100
    input_len: LengthSpec = field(default_factory=lambda: LengthSpec.fixed(128))
    output_len: LengthSpec = field(default_factory=lambda: LengthSpec.fixed(128))
    dataset: Path | None = None
    prefix_groups: int = 0
    prefix_len: int = 0
    token_id_range: tuple[int, int] = (100, 30000)  # [low, high): clear of special tokens in common vocabularies

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError(f"num_requests: must be >= 1, got {self.num_requests}")
        if self.prefix_groups < 0:
            raise ValueError(f"shared_prefix_groups: must be >= 0, got {self.prefix_groups}")
        if self.prefix_groups and self.prefix_len < 1:
            raise ValueError(f"shared_prefix_len: must be >= 1 with prefix groups, got {self.prefix_len}")
        if self.prefix_groups and self.dataset is not None:
            raise ValueError("shared_prefix_groups: cannot be combined with a dataset file")
        low, high = self.token_id_range
        if not 0 <= low < high:
            raise ValueError(f"token_id_range: need 0 <= low < high, got {low}:{high}")


@dataclass(frozen=True, slots=True)
class LoadShape:
    """When requests leave: gaps ~ Gamma(burstiness, 1/(rate*burstiness)), at most `max_concurrency` in flight."""

    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    warmup_requests: int = 0

    def __post_init__(self) -> None:
        if not self.request_rate > 0:
            raise ValueError(f"request_rate: must be > 0 (or inf), got {self.request_rate}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise ValueError(f"burstiness: must be a finite number > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be >= 1, got {self.max_concurrency}")
        if self.warmup_requests < 0:
            raise ValueError(f"warmup: must be >= 0, got {self.warmup_requests}")


@dataclass(frozen=True, slots=True)
class Slo:
    """A service-level objective: `metric` (per request) must be <= `limit_ms`."""

    metric: SloMetric
    limit_ms: float

    def __post_init__(self) -> None:
        if self.metric not in SLO_METRICS:
            raise ValueError(f"goodput: unknown metric {self.metric!r}; use one of {', '.join(SLO_METRICS)}")
        if not (self.limit_ms > 0 and math.isfinite(self.limit_ms)):
            raise ValueError(f"goodput: {self.metric} limit must be a finite number of ms > 0, got {self.limit_ms}")

    @staticmethod
    def parse(text: str) -> "Slo":
        """`ttft:500` -> Slo("ttft", 500.0)."""
        name, sep, value = text.partition(":")
        if not sep:
            raise ValueError(f"goodput: cannot read {text!r}; use METRIC:MILLISECONDS, e.g. ttft:500")
        try:
            limit = float(value)
        except ValueError:
            raise ValueError(f"goodput: {text!r} has no number of milliseconds after the colon") from None
        return Slo(name.strip().lower(), limit)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One load-test run."""

    target: Target
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    shape: LoadShape = field(default_factory=LoadShape)
    slos: tuple[Slo, ...] = ()
    seed: int = 0
    scrape_metrics: bool = True

    def __post_init__(self) -> None:
        metrics = [s.metric for s in self.slos]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"goodput: each metric may appear once, got {', '.join(metrics)}")
