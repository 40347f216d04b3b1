"""Per-request generation settings, validated where they enter the engine.

`SamplingParams` is the one boundary object a caller (offline `LLM`, the HTTP server) fills in. Every check
raises `ValueError` whose message starts with the parameter's name, so the server can report it as `param`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .structured.spec import StructuredOutputsParams

# Upper bounds on size-like parameters: nothing a client sends may make the engine allocate without limit.
MAX_N = 16
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024  # entries of logit_bias
MAX_PROMPT_LOGPROBS = 20
# Below this a temperature is greedy (vLLM's threshold too). Dividing logits by, say, 1e-38 overflows them to
# inf, and the sampler would then draw from NaN probabilities.
GREEDY_BELOW_TEMPERATURE = 1e-5


class ParamError(ValueError):
    """A bad value for one named parameter; `param` is its name as the API spells it."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


def _finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ParamError(name, f"must be a finite number, got {value!r}")


@dataclass
class SamplingParams:
    """How to turn logits into tokens and when to stop.

    temperature 0 (or anything below GREEDY_BELOW_TEMPERATURE) means greedy. top_k <= 0 (or -1) disables top-k; top_p 1 and min_p 0 disable those.
    Penalties follow the OpenAI/vLLM definitions: presence and frequency apply to generated tokens,
    repetition (multiplicative, > 1 discourages) to prompt and generated tokens.
    """

    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    # log-probabilities of every prompt token (and this many alternatives), computed by the prefill itself;
    # `RequestOutput.prompt_logprobs` / `SequenceDelta.prompt_logprobs` (None for the first prompt token)
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None  # the output must match this (JSON schema, regex...)
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit, in [-100, 100]

    def __post_init__(self) -> None:
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()
        if self.temperature < GREEDY_BELOW_TEMPERATURE:
            self.temperature = 0.0

    def validate(self) -> None:
        _int_in("n", self.n, 1, MAX_N)
        if self.max_tokens is not None:
            # 0 = prefill only, generate nothing: what a request for the prompt's logprobs alone needs
            _int_in("max_tokens", self.max_tokens, 0 if self.prompt_logprobs is not None else 1, None)
        _int_in("min_tokens", self.min_tokens, 0, None)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ParamError("min_tokens", f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        _finite("temperature", self.temperature)
        if not 0.0 <= self.temperature <= 2.0:
            raise ParamError("temperature", f"must be in [0, 2], got {self.temperature}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < -1:
            raise ParamError("top_k", f"must be -1, 0 (off) or a positive integer, got {self.top_k!r}")
        _finite("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ParamError("top_p", f"must be in (0, 1], got {self.top_p}")
        _finite("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ParamError("min_p", f"must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _finite(name, value)
            if not -2.0 <= value <= 2.0:
                raise ParamError(name, f"must be in [-2, 2], got {value}")
        _finite("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ParamError("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        if self.seed is not None:
            _int_in("seed", self.seed, -(2**63), 2**63 - 1)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ParamError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ParamError("stop", "each stop string must be a non-empty string")
            if len(s) > MAX_STOP_STRING_CHARS:
                raise ParamError("stop", f"each stop string must be at most {MAX_STOP_STRING_CHARS} characters")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise ParamError("stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} ids, got {len(self.stop_token_ids)}")
        for t in self.stop_token_ids:
            _int_in("stop_token_ids", t, 0, None)
        if self.logprobs is not None:
            _int_in("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if self.prompt_logprobs is not None:
            _int_in("prompt_logprobs", self.prompt_logprobs, 0, MAX_PROMPT_LOGPROBS)
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict) or len(self.logit_bias) > MAX_LOGIT_BIAS:
                raise ParamError("logit_bias", f"must be a map of at most {MAX_LOGIT_BIAS} token ids to numbers")
            for t, v in self.logit_bias.items():
                _int_in("logit_bias", t, 0, None)
                _finite("logit_bias", v)
                if not -100.0 <= v <= 100.0:
                    raise ParamError("logit_bias", f"values must be in [-100, 100], got {v} for token {t}")
        if self.structured_outputs is not None:
            if not isinstance(self.structured_outputs, StructuredOutputsParams):
                raise ParamError("structured_outputs", "must be a StructuredOutputsParams")
            if self.min_tokens:
                # the grammar may allow nothing but EOS while min_tokens forbids it: no token would be left
                raise ParamError("min_tokens", "cannot be combined with structured output")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


def _int_in(name: str, value: object, lo: int | None, hi: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ParamError(name, f"must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ParamError(name, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ParamError(name, f"must be <= {hi}, got {value}")
