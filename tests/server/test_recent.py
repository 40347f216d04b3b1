"""The dashboard's last-minute window (server/recent.py): TTFT at a sequence's first token, TPOT at its finish,
steps with their roofline numbers, and nothing older than the window."""

from __future__ import annotations

import pytest

from engine.outputs import IterationStats, RequestTimes, SequenceDelta, StepOutput
from engine.roofline import ModelCost, Peak, Share, step_cost
from server.recent import RecentActivity

MODEL = ModelCost(2, 4, 8, 32, 100, 1000, 4000, 64)


def delta(rid: str, arrival: float, first: float | None, last: float | None, n_out: int, finished: bool, t: float):
    times = RequestTimes(arrival, arrival, first, last, t if finished else None)
    return SequenceDelta(rid, 0, [7], "", None, t, 5, n_out, 0, "length" if finished else None, None, times)


def step(kind_share: Share, deltas, seconds: float) -> StepOutput:
    cost = step_cost(MODEL, [kind_share])
    stats = IterationStats(1, 0, 1, 8, kind_share.num_new, 0 if kind_share.decode else kind_share.num_new,
                           len(deltas), 0, 0, 0, step_time_s=seconds, cost=cost)
    return StepOutput(deltas, stats)


def test_the_window_holds_latencies_steps_and_utilization():
    r = RecentActivity(window_s=60)
    r.record(step(Share(0, 5, True, False), [delta("a", 100.0, 100.5, 100.5, 1, False, 100.5)], 0.5), now=100.5)
    r.record(step(Share(5, 1, True, True), [delta("a", 100.0, 100.5, 101.0, 2, False, 101.0)], 0.25), now=101.0)
    r.record(step(Share(6, 1, True, True), [delta("a", 100.0, 100.5, 101.5, 3, True, 101.5)], 0.25), now=101.5)
    peak = Peak("toy", 1e6, 1e5)
    s = r.summary(peak, now=102.0)
    assert s["ttft_s"] == {"count": 1, "p50": 0.5, "p90": 0.5}
    assert s["tpot_s"]["count"] == 1 and s["tpot_s"]["p50"] == pytest.approx((101.5 - 100.5) / 2)
    assert (s["by_kind"]["prefill"]["steps"], s["by_kind"]["decode"]["steps"]) == (1, 2)
    flops = sum(step_cost(MODEL, [sh]).flops for sh in (Share(0, 5, True, False), Share(5, 1, True, True), Share(6, 1, True, True)))
    assert s["flops_per_s_busy"] == pytest.approx(flops / 1.0) and s["mfu_busy"] == pytest.approx(flops / 1.0 / 1e6)
    assert s["generation_tokens_per_s"] == pytest.approx(3 / 60) and s["busy_fraction"] == pytest.approx(1 / 60)
    assert [p["kind"] for p in s["points"]] == ["prefill", "decode", "decode"]
    assert s["peak"]["ridge"] == 10.0


def test_entries_older_than_the_window_are_dropped():
    r = RecentActivity(window_s=60)
    r.record(step(Share(0, 5, True, False), [delta("a", 0.0, 1.0, 1.0, 1, False, 1.0)], 1.0), now=1.0)
    s = r.summary(None, now=62.0)
    assert s["ttft_s"]["count"] == 0 and s["points"] == [] and s["mfu_busy"] is None and s["peak"] is None
