"""A real Prometheus scraping a real `kvserve serve` (default model, CPU) on loopback: scripts/prometheus_check.py.

Skipped only where the `prometheus` binary is missing (Debian/Ubuntu: apt-get install prometheus), or on a
branch without the server package. About a minute: the server's start, a few completions, one-second scrapes.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prometheus_check.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs prometheus (apt-get install prometheus)"),
    pytest.mark.skipif(importlib.util.find_spec("server.cli") is None, reason="the server is not merged yet"),
]


def load_check():
    spec = importlib.util.spec_from_file_location("prometheus_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check():
    return load_check()


@pytest.fixture(scope="module")
def result(check, tmp_path_factory):
    return check.run_check(tmp_path_factory.mktemp("prometheus-check"))


def test_dashboard_ttft_p50_equals_the_quantile_of_kvserves_buckets(result):
    assert math.isfinite(result.ttft_p50_prometheus) and result.ttft_p50_prometheus > 0
    assert result.ttft_p50_prometheus == pytest.approx(result.ttft_p50_from_buckets, rel=1e-6)


def test_every_dashboard_expression_returns_finite_samples(check, result):
    assert list(result.expressions) == check.dashboard_expressions()
    assert all(values and all(math.isfinite(v) for v in values) for values in result.expressions.values())


def test_the_shared_prefix_shows_up_as_prefix_cache_hits(result):
    assert result.num_requests == 6
    assert result.prefix_cache_hits >= 16  # at least one full KV block of the shared prefix
