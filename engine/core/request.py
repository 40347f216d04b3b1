"""One sequence's state as the engine sees it: its tokens, progress, status and timestamps.

A `Request` here is one *sequence*: a prompt with n > 1 becomes n sequences that share `parent_id` and
differ in `index`. The request owns its token ids and its block hashes (derived from those ids); the KV-cache
manager owns which blocks it holds; the scheduler owns which queue it is in.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field

from ..outputs import RequestTimes, TokenLogprob
from ..sampling_params import SamplingParams
from ..step import SamplingOptions


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclass(eq=False)
class Request:
    """A sequence being generated.

    Token bookkeeping, the one loop behind prefill, chunked prefill and decode::

        all_token_ids:  [ prompt ............ | output ...... ]
                          <-- num_computed_tokens -->          KV already in the cache
                                                     <- new -> scheduled this step
        num_tokens = len(all_token_ids); a step that computes up to num_tokens samples one more token.

    With asynchronous scheduling a step is launched before the previous step's sampled tokens reach the
    engine: `num_pending_tokens` counts tokens sampled by launched steps and not yet appended. The scheduler
    treats them as known (`num_tokens + num_pending_tokens`); the worker takes their values on the device.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    eos_token_ids: tuple[int, ...] = ()
    parent_id: str | None = None
    index: int = 0
    seed: int | None = None
    cache_salt: str | None = None
    wait_for: str | None = None
    arrival_time: float = field(default_factory=time.time)

    status: RequestStatus = RequestStatus.WAITING
    all_token_ids: list[int] = field(init=False)
    sampling: SamplingOptions = field(init=False)  # what the worker needs of params, seed and EOS ids
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit on first scheduling; -1 until then
    num_preemptions: int = 0
    num_pending_tokens: int = 0  # sampled by a launched step, not appended yet (asynchronous scheduling)
    # speculative decoding: tokens proposed to follow all_token_ids, for the next step only (engine.spec_decode)
    draft_token_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    stop_reason: str | int | None = None
    # SamplingParams.prompt_logprobs: what the prefill has computed so far, one entry per prompt position from
    # 0 (None); only the first of n sequences computes them (the others wait for it: `wait_for`)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        self.sampling = SamplingOptions.from_params(self.params, self.seed, self.eos_token_ids)
        if self.params.prompt_logprobs is not None and self.index == 0:
            self.prompt_logprobs = [None]
        elif self.sampling.prompt_logprobs is not None:
            self.sampling = dataclasses.replace(self.sampling, prompt_logprobs=None)
        if self.parent_id is None:
            self.parent_id = self.request_id

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Prompt logprobs are wanted and some are still missing: its prefill must compute every prompt
        position itself (no prefix-cache hit for its own prompt; its blocks are still cached for others)."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    def add_prompt_logprobs(self, first_position: int, entries) -> None:
        """Keep the entries for positions not held yet (a recompute after preemption sends some again)."""
        have = len(self.prompt_logprobs)
        assert first_position <= have, f"{self.request_id}: prompt logprobs skip positions {have}..{first_position}"
        self.prompt_logprobs.extend(entries[have - first_position:])

    def worker_sampling(self) -> SamplingOptions:
        """The options sent with the whole sequence: without prompt logprobs once all are held."""
        if self.sampling.prompt_logprobs is not None and not self.needs_prompt_logprobs:
            return dataclasses.replace(self.sampling, prompt_logprobs=None)
        return self.sampling

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids):]

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token(self, token_id: int, now: float) -> None:
        self.all_token_ids.append(token_id)
        if self.num_pending_tokens:
            self.num_pending_tokens -= 1
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now

    def times(self) -> RequestTimes:
        return RequestTimes(self.arrival_time, self.first_scheduled_time, self.first_token_time,
                            self.last_token_time, self.finished_time)
