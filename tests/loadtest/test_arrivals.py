"""The arrival schedule: Gamma gaps with mean 1/rate and variance 1/(burstiness * rate^2)."""

import math

import numpy as np
import pytest

from loadtest.arrivals import arrival_offsets, interarrival_gaps

N = 40_000


def test_poisson_gaps_have_mean_one_over_rate_and_exponential_variance():
    gaps = interarrival_gaps(N, rate=4.0, burstiness=1.0, rng=np.random.default_rng(1))
    assert gaps.mean() == pytest.approx(0.25, rel=0.02)
    assert gaps.var() == pytest.approx(0.25**2, rel=0.05)  # exponential: var = mean^2


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_burstiness_keeps_the_mean_and_scales_the_variance(burstiness):
    gaps = interarrival_gaps(N, rate=4.0, burstiness=burstiness, rng=np.random.default_rng(2))
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.var() == pytest.approx(0.25**2 / burstiness, rel=0.08)


def test_lower_burstiness_means_burstier_arrivals():
    cv = {k: np.std(g) / np.mean(g) for k in (0.5, 1.0, 2.0)
          for g in [interarrival_gaps(N, 10.0, k, np.random.default_rng(3))]}
    assert cv[0.5] > cv[1.0] > cv[2.0]
    assert cv[0.5] == pytest.approx(math.sqrt(2), rel=0.05)


def test_infinite_rate_sends_everything_at_once():
    assert interarrival_gaps(5, math.inf, 1.0, np.random.default_rng(0)).tolist() == [0.0] * 5
    assert arrival_offsets(5, math.inf, 0.5, np.random.default_rng(0)).tolist() == [0.0] * 5


def test_offsets_start_at_zero_and_accumulate_the_gaps():
    offsets = arrival_offsets(6, 2.0, 1.0, np.random.default_rng(7))
    gaps = interarrival_gaps(5, 2.0, 1.0, np.random.default_rng(7))
    assert offsets[0] == 0.0
    assert np.allclose(np.diff(offsets), gaps)


def test_the_schedule_is_reproducible_from_the_seed():
    a = arrival_offsets(100, 3.0, 0.7, np.random.default_rng(42))
    b = arrival_offsets(100, 3.0, 0.7, np.random.default_rng(42))
    c = arrival_offsets(100, 3.0, 0.7, np.random.default_rng(43))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("rate,burstiness", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, math.inf)])
def test_bad_rate_or_burstiness_is_rejected(rate, burstiness):
    with pytest.raises(ValueError):
        interarrival_gaps(3, rate, burstiness, np.random.default_rng(0))
