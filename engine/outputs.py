"""What the engine hands back: per-request deltas from each step, finished results, and iteration stats.

These dataclasses are the boundary between the engine and whoever drives it (the offline `LLM`, the HTTP
server, the benchmark). They hold plain values only, so they can later cross a process boundary as-is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .roofline import StepCost
from .spec_decode.stats import SpecDecodeStats


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's log-probability and the top-N alternatives (token id -> logprob). `rank` (1 = the most
    likely token) is known for prompt tokens (`SamplingParams.prompt_logprobs`), None for sampled ones."""

    token_id: int
    logprob: float
    top: dict[int, float]
    rank: int | None = None


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Wall-clock timestamps (time.time()) of one sequence's life; None until the event happens."""

    arrival: float
    first_scheduled: float | None
    first_token: float | None
    last_token: float | None
    finished: float | None


@dataclass(frozen=True, slots=True)
class SequenceDelta:
    """What one sequence (one of a request's n choices) produced in one engine step.

    `new_text` never contains part of a stop string and never ends inside a multi-byte character.
    `finish_reason` is "stop" (EOS, stop token or stop string), "length" (max_tokens or the context window)
    or "abort"; None while the sequence runs. `stop_reason` is the stop string or stop token id that ended it.
    """

    request_id: str
    index: int
    new_token_ids: list[int]
    new_text: str
    new_logprobs: list[TokenLogprob] | None
    token_time: float
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    finish_reason: str | None
    stop_reason: str | int | None
    times: RequestTimes
    # with `SamplingParams.prompt_logprobs`: on each sequence's first delta (its first token, or its final
    # delta when max_tokens is 0), one entry per prompt token, None for the first one
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class IterationStats:
    """The scheduler's and the KV cache's state after one step, plus what the step did."""

    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    num_scheduled_tokens: int
    num_prompt_tokens: int
    num_generation_tokens: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    step_time_s: float  # the whole step: schedule, run the model, sample, detokenize
    cost: StepCost | None = None  # the step's model FLOPs and bytes by phase (engine.step_cost)
    spec_decode: SpecDecodeStats | None = None  # what speculation did in the step; None when it is off

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


@dataclass(slots=True)
class StepOutput:
    """Everything one call of `LLMEngine.step()` returns."""

    deltas: list[SequenceDelta]
    stats: IterationStats


@dataclass
class CompletionOutput:
    """One finished sequence (one of the n choices) of an offline request."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class RequestOutput:
    """The offline API's result for one prompt: its n completions, in choice order.

    `.token_ids`, `.text` and `.finish_reason` are those of the first completion, for the common n=1 case.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    num_cached_tokens: int = 0
    # with `SamplingParams.prompt_logprobs`: one entry per prompt token, None for the first (nothing predicts it)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason
