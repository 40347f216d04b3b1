"""The last minute of engine activity, for the live dashboard: steps (with their roofline position), TTFT and
TPOT of sequences, tokens. Fed on the event loop with every `StepOutput`, next to the Prometheus metrics.

Prometheus counters answer "since the start"; the dashboard wants "right now" without a Prometheus server,
so this keeps a bounded window: entries older than `window_s` are dropped, and at most `max_steps` steps
(a GPU can run hundreds a second) are kept. TTFT and TPOT are defined as in docs/metrics.md.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from engine.outputs import StepOutput
from engine.roofline import Peak

WINDOW_S = 60.0
MAX_STEPS = 20000
MAX_POINTS = 400  # steps sent to the page for its roofline chart (the latest ones)


@dataclass(frozen=True, slots=True)
class StepPoint:
    t: float
    kind: str
    seconds: float
    flops: float
    bytes: float
    prompt_tokens: int
    generation_tokens: int


class RecentActivity:
    def __init__(self, window_s: float = WINDOW_S, max_steps: int = MAX_STEPS):
        self.window_s = window_s
        self.steps: deque[StepPoint] = deque(maxlen=max_steps)
        self.ttft: deque[tuple[float, float]] = deque(maxlen=max_steps)
        self.tpot: deque[tuple[float, float]] = deque(maxlen=max_steps)
        self._first: dict[tuple[str, int], float] = {}  # live sequences: time of their first token

    def record(self, out: StepOutput, now: float | None = None) -> None:
        now = time.time() if now is None else now
        s = out.stats
        if s.cost is not None and s.cost.kind != "idle":
            self.steps.append(StepPoint(now, s.cost.kind, s.step_time_s, s.cost.flops, s.cost.bytes,
                                        s.num_prompt_tokens, s.num_generation_tokens))
        for d in out.deltas:
            key = (d.request_id, d.index)
            if d.new_token_ids and key not in self._first:
                self._first[key] = d.token_time
                self.ttft.append((now, d.token_time - d.times.arrival))
            if d.finished:
                self._first.pop(key, None)
                t = d.times
                if t.first_token is not None and t.last_token is not None and d.num_output_tokens >= 2:
                    self.tpot.append((now, (t.last_token - t.first_token) / (d.num_output_tokens - 1)))
        self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        for q in (self.steps, self.ttft, self.tpot):
            while q and (q[0].t if isinstance(q[0], StepPoint) else q[0][0]) < cutoff:
                q.popleft()

    def summary(self, peak: Peak | None, now: float | None = None) -> dict:
        """The window in numbers: latencies (p50/p90), tokens/s, utilization, and the latest steps' points."""
        now = time.time() if now is None else now
        self._trim(now)
        steps = list(self.steps)
        busy = sum(p.seconds for p in steps)
        flops, nbytes = sum(p.flops for p in steps), sum(p.bytes for p in steps)
        span = self.window_s
        by_kind = {}
        for kind in ("prefill", "decode", "mixed"):
            ks = [p for p in steps if p.kind == kind]
            secs = sum(p.seconds for p in ks)
            by_kind[kind] = {"steps": len(ks), "seconds": secs,
                             "flops_per_s": sum(p.flops for p in ks) / secs if secs else None,
                             "arithmetic_intensity": _ratio(sum(p.flops for p in ks), sum(p.bytes for p in ks))}
        out = {
            "window_s": span,
            "ttft_s": _quantiles([v for _, v in self.ttft]),
            "tpot_s": _quantiles([v for _, v in self.tpot]),
            "generation_tokens_per_s": sum(p.generation_tokens for p in steps) / span,
            "prompt_tokens_per_s": sum(p.prompt_tokens for p in steps) / span,
            "busy_fraction": min(busy / span, 1.0),
            "flops_per_s_busy": flops / busy if busy else None,
            "bytes_per_s_busy": nbytes / busy if busy else None,
            "arithmetic_intensity": _ratio(flops, nbytes),
            "by_kind": by_kind,
            "peak": None if peak is None else {"source": peak.source, "flops": peak.flops, "bandwidth": peak.bandwidth,
                                               "ridge": peak.ridge},
            "mfu_busy": flops / busy / peak.flops if busy and peak else None,
            "mbu_busy": nbytes / busy / peak.bandwidth if busy and peak else None,
            "points": [{"kind": p.kind, "ai": _ratio(p.flops, p.bytes), "flops_per_s": p.flops / p.seconds if p.seconds else 0.0}
                       for p in steps[-MAX_POINTS:]],
        }
        return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "p50": None, "p90": None}
    v = sorted(values)

    def q(p: float) -> float:  # nearest rank
        return v[min(len(v) - 1, max(0, math.ceil(p * len(v)) - 1))]

    return {"count": len(v), "p50": q(0.5), "p90": q(0.9)}
