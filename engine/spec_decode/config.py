"""`SpeculativeConfig`: what speculative decoding runs with, validated once, built from a dict (the offline
`LLM(speculative_config={...})`, vLLM's shape) or from the CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram",)

# Above this many running sequences a step does not speculate. A decode step's cost grows with its token
# count once the batch makes the forward compute-bound (on this project's 2-core CPU with the 135M default
# model that is already true at a few sequences; docs/benchmarks.md), while the tokens a draft saves do not.
DEFAULT_DISABLE_BY_BATCH_SIZE = 4


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2  # shortest n-gram to match
    prompt_lookup_max: int = 4  # longest n-gram to match (longer matches are tried first)
    disable_by_batch_size: int = DEFAULT_DISABLE_BY_BATCH_SIZE  # more running sequences: no drafts this step

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative_config.method: must be one of {METHODS}, got {self.method!r} "
                             "(the draft-model method is not implemented yet)")
        for name in ("num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max", "disable_by_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"speculative_config.{name}: must be an integer >= 1, got {value!r}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"speculative_config.prompt_lookup_min: {self.prompt_lookup_min} is above "
                             f"prompt_lookup_max ({self.prompt_lookup_max})")

    @classmethod
    def from_value(cls, value: "SpeculativeConfig | dict[str, Any] | None") -> "SpeculativeConfig | None":
        """None (speculation off), a `SpeculativeConfig`, or a dict of its fields (unknown keys are refused)."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config: must be a dict or None, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unknown keys {unknown} (known: {sorted(known)})")
        if "method" not in value:
            raise ValueError("speculative_config.method: required (\"ngram\")")
        return cls(**value)
