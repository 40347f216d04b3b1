"""Length distributions for prompts and outputs: parsing the CLI spelling and drawing seeded samples.

Spellings (one `LengthSpec` each):

    128            fixed: every request gets 128
    32:256         uniform integers, both ends included
    normal:128,32  normal(mean=128, std=32), rounded, clipped below at 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

LengthKind = Literal["fixed", "uniform", "normal"]


@dataclass(frozen=True, slots=True)
class LengthSpec:
    """A distribution of positive integer lengths (tokens)."""

    kind: LengthKind
    low: int  # fixed: the value; uniform: the lower end; normal: unused (0)
    high: int  # fixed: the value; uniform: the upper end (included); normal: unused (0)
    mean: float = 0.0
    std: float = 0.0

    def __post_init__(self) -> None:
        if self.kind in ("fixed", "uniform"):
            if self.low < 1:
                raise ValueError(f"length: must be >= 1, got {self.low}")
            if self.high < self.low:
                raise ValueError(f"length: range {self.low}:{self.high} is empty")
        elif self.kind == "normal":
            if not self.mean >= 1 or not np.isfinite(self.mean):
                raise ValueError(f"length: normal mean must be a finite number >= 1, got {self.mean}")
            if not self.std >= 0 or not np.isfinite(self.std):
                raise ValueError(f"length: normal std must be a finite number >= 0, got {self.std}")
        else:
            raise ValueError(f"length: unknown kind {self.kind!r}")

    @staticmethod
    def fixed(value: int) -> "LengthSpec":
        return LengthSpec("fixed", value, value)

    @staticmethod
    def uniform(low: int, high: int) -> "LengthSpec":
        return LengthSpec("uniform", low, high)

    @staticmethod
    def normal(mean: float, std: float) -> "LengthSpec":
        return LengthSpec("normal", 0, 0, float(mean), float(std))

    @staticmethod
    def parse(text: str) -> "LengthSpec":
        """`128`, `32:256` or `normal:128,32`; ValueError quotes the text it could not read."""
        s = text.strip()
        try:
            if s.startswith("normal:"):
                mean, std = s[len("normal:"):].split(",")
                return LengthSpec.normal(float(mean), float(std))
            if ":" in s:
                low, high = s.split(":")
                return LengthSpec.uniform(int(low), int(high))
            return LengthSpec.fixed(int(s))
        except ValueError as e:
            if str(e).startswith("length:"):
                raise
            raise ValueError(f"length: cannot read {text!r}; use N, LOW:HIGH or normal:MEAN,STD") from None

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` lengths as int64, every one >= 1."""
        if self.kind == "fixed":
            return np.full(count, self.low, dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(self.low, self.high + 1, size=count, dtype=np.int64)
        drawn = np.rint(rng.normal(self.mean, self.std, size=count)).astype(np.int64)
        return np.maximum(drawn, 1)

    def describe(self) -> str:
        """The CLI spelling, so a result file says exactly what was asked for."""
        if self.kind == "fixed":
            return str(self.low)
        if self.kind == "uniform":
            return f"{self.low}:{self.high}"
        return f"normal:{self.mean:g},{self.std:g}"
