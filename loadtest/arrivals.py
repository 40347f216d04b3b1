"""When each request leaves: a seeded arrival schedule.

Gaps between consecutive requests are Gamma(shape=k, scale=1/(rate*k)) with k the burstiness. Their mean
is always 1/rate; their variance is 1/(k*rate^2), so k = 1 is a Poisson process (exponential gaps),
k < 1 is burstier and k > 1 is more regular. An infinite rate sends everything at t = 0.
"""

from __future__ import annotations

import math

import numpy as np


def _check(rate: float, burstiness: float) -> None:
    if not rate > 0:
        raise ValueError(f"request_rate: must be > 0 (or inf), got {rate}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness: must be a finite number > 0, got {burstiness}")


def interarrival_gaps(count: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """`count` gaps in seconds (all zeros for an infinite rate)."""
    _check(rate, burstiness)
    if math.isinf(rate):
        return np.zeros(count)
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)


def arrival_offsets(count: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Send times in seconds from the start of the run: the first request at 0, then one gap after another."""
    if count == 0:
        return np.zeros(0)
    gaps = interarrival_gaps(count - 1, rate, burstiness, rng)
    return np.concatenate([[0.0], np.cumsum(gaps)])
