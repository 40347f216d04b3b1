"""`SpeculativeConfig`: what speculative decoding runs with, validated once, built from a dict (the offline
`LLM(speculative_config={...})`, vLLM's shape) or from the CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram", "draft")

# Above this many running sequences a step does not speculate: once the batch makes the forward compute-bound,
# every draft token costs about as much as a decode token while it saves a step only when it is right.
# Measured with `scripts/spec_batch_sweep.py` (docs/benchmarks.md: n-gram, SmolLM2-135M, fp32, 2-core CPU):
# with / without on the repetitive workload fell from 2.44x at batch 1 to 1.26x-1.33x at 4 and 8, still a gain
# at 8, the largest size measured; 8 is the largest size at which speculation was measured to pay.
DEFAULT_DISABLE_BY_BATCH_SIZE = 8


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2  # shortest n-gram to match
    prompt_lookup_max: int = 4  # longest n-gram to match (longer matches are tried first)
    disable_by_batch_size: int = DEFAULT_DISABLE_BY_BATCH_SIZE  # more running sequences: no drafts this step
    # method "draft": the draft model (a path or name, as for the target; None = the target model itself,
    # which only makes sense truncated by draft_layers) and how many of its first layers to run (None: all;
    # N: self-speculation by early exit, the first N layers plus the model's own final norm and head)
    model: str | None = None
    draft_layers: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative_config.method: must be one of {METHODS}, got {self.method!r}")
        for name in ("num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max", "disable_by_batch_size"):
            _check_positive(name, getattr(self, name))
        if self.draft_layers is not None:
            _check_positive("draft_layers", self.draft_layers)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"speculative_config.prompt_lookup_min: {self.prompt_lookup_min} is above "
                             f"prompt_lookup_max ({self.prompt_lookup_max})")
        if self.method == "draft" and self.model is None and self.draft_layers is None:
            raise ValueError("speculative_model: the draft method needs a draft model (speculative_config.model, "
                             "--speculative-model) or the target's first layers (draft_layers, "
                             "--speculative-draft-layers)")
        if self.method != "draft" and (self.model is not None or self.draft_layers is not None):
            which = "model" if self.model is not None else "draft_layers"
            raise ValueError(f"speculative_config.{which}: only for method 'draft', not {self.method!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"speculative_model: must be a path or model name, got {type(self.model).__name__}")

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
            raise ValueError("speculative_config.method: required (\"ngram\" or \"draft\")")
        return cls(**value)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"speculative_config.{name}: must be an integer >= 1, got {value!r}")
