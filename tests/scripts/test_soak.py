"""scripts/soak.py's verdict: failures, RSS growth after warm-up and p99 drift each fail the soak."""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ARGS = Namespace(warmup=60.0, window=300.0, interval=10.0)


def samples(soak, rss: list[float]):
    return [soak.Sample(10.0 * (i + 1), m, 20, 0.1, 5, 0, 0.5, 0.9, 0.2) for i, m in enumerate(rss)]


def run(soak, rss, latencies, failures=()):
    state = soak.State(e2e=[(float(t), x) for t, x in latencies], failures=list(failures))
    return soak.verdict(ARGS, samples(soak, rss), state)


def steady(seconds: int, latency: float = 1.0):
    return [(t, latency) for t in range(1, seconds)]


def test_a_steady_run_passes():
    soak = load()
    assert run(soak, [900.0] * 6 + [905.0] * 200, steady(2000)) == []


def test_a_failed_request_fails_the_soak():
    soak = load()
    assert "1 request(s) failed" in run(soak, [900.0] * 50, steady(500), ["500: boom"])[0]


def test_rss_growth_after_warmup_fails_the_soak():
    soak = load()
    problems = run(soak, [500.0] * 5 + [900.0] + [960.0] * 100, steady(1000))
    assert len(problems) == 1 and "RSS grew 6.7%" in problems[0]


def test_p99_latency_drift_fails_the_soak():
    soak = load()
    latencies = steady(1000) + [(t, 1.5) for t in range(1000, 2000)]
    problems = run(soak, [900.0] * 200, latencies)
    assert len(problems) == 1 and "p99 latency rose 50.0%" in problems[0]
