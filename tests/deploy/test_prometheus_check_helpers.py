"""The pure helpers of scripts/prometheus_check.py (no Prometheus needed)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prometheus_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("prometheus_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BUCKETS = [(0.1, 2.0), (0.5, 6.0), (1.0, 8.0), (math.inf, 10.0)]


def test_bucket_quantile_interpolates_linearly_inside_the_bucket(check):
    assert check.bucket_quantile(0.5, BUCKETS) == pytest.approx(0.4)  # rank 5: 3 of 4 into (0.1, 0.5]
    assert check.bucket_quantile(0.7, BUCKETS) == pytest.approx(0.75)  # rank 7: 1 of 2 into (0.5, 1.0]


def test_bucket_quantile_starts_the_lowest_bucket_at_zero(check):
    assert check.bucket_quantile(0.1, BUCKETS) == pytest.approx(0.05)  # rank 1: 1 of 2 into (0, 0.1]


def test_bucket_quantile_answers_the_highest_finite_bound_for_the_inf_bucket(check):
    assert check.bucket_quantile(0.95, BUCKETS) == 1.0


def test_bucket_quantile_of_no_observations_is_nan(check):
    assert math.isnan(check.bucket_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))


def test_dashboard_variables_become_match_all(check):
    exprs = check.dashboard_expressions()
    # the serving panels, the roofline panels (utilization, intensity, time, FLOP/s, bytes), speculative decoding
    assert len(exprs) == 27 + 7 + 2
    assert all("$" not in check.concrete(e) for e in exprs)
    assert check.concrete('x{model_name=~"$model_name", instance=~"$instance"}') == \
        'x{model_name=~".*", instance=~".*"}'
