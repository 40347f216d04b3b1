"""The step boundary: what the scheduler sends a model-runner worker, and what the worker sends back.

Everything here is plain, immutable data (ints, floats, strings, tuples and lists of them), so a step can
cross a process boundary as it is, encoded without pickle. A worker keeps its own copy of every running
sequence (`engine.worker.seq_states`), so a step carries each sequence once in full, when it is first
scheduled (`NewSeq`), and after that only what changed (`CachedSeq`):

    step 1:  NewSeq("a", token_ids=[p0 .. p9], block_ids=[4, 7], start=0, num_new=10, sample=True)
    step 2:  CachedSeq("a", new_token_ids=[t10], new_block_ids=[], start=10, num_new=1, sample=True)
    step 3:  CachedSeq("a", new_token_ids=[t11], new_block_ids=[9], start=11, num_new=1, sample=True)
    ...      "a" preempted: its id is in `preempted_ids` and the worker drops its copy; when it runs again it
             comes back as a NewSeq holding every token it has (prompt and output so far) and its new blocks.
             "a" finished: its id is in the next step's `finished_ids`.

`new_token_ids` are the tokens the engine appended since the worker last saw the sequence (the sampled
ones), so the engine stays the one source of truth for every sequence's tokens.

With speculative decoding a decoding sequence also carries `draft_token_ids`, k proposed tokens computed
after its last known token in the same step (`num_new` = 1 + k). They are never part of the worker's copy
of the sequence: the worker samples a token at each of the k + 1 positions and returns the longest run the
drafts predicted plus one (`engine.spec_decode.verify`); the engine appends those and rolls the sequence's
computed-token count back past the rejected drafts, whose K/V slots are simply written again later; blocks
wholly past the accepted tokens are freed, and the next `CachedSeq` says where to cut the table
(`trim_blocks_to`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .outputs import TokenLogprob
from .sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """What a worker needs of a sequence's `SamplingParams` to turn logits into its next token.

    `forbidden_ids` (stop token ids, plus the EOS ids unless `ignore_eos`) may not be sampled while the
    sequence has fewer than `min_tokens` output tokens. `seed` is the sequence's own seed (the request's
    seed + its index among the n choices), None to draw from the worker's shared generator.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    logprobs: int | None = None
    # the prompt tokens' logprobs with this many alternatives; None when not wanted (the engine also sends
    # None once it holds all of them, so a recompute after preemption does not compute them again)
    prompt_logprobs: int | None = None
    min_tokens: int = 0
    forbidden_ids: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit); only the sampling rank reads it

    @classmethod
    def from_params(cls, params: SamplingParams, seed: int | None = None,
                    eos_token_ids: tuple[int, ...] = ()) -> "SamplingOptions":
        forbidden = tuple(params.stop_token_ids) + (() if params.ignore_eos else tuple(eos_token_ids))
        return cls(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
                   presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
                   repetition_penalty=params.repetition_penalty, seed=seed, logprobs=params.logprobs,
                   prompt_logprobs=params.prompt_logprobs,
                   min_tokens=params.min_tokens, forbidden_ids=forbidden if params.min_tokens else (),
                   logit_bias=tuple(sorted((params.logit_bias or {}).items())))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def forbidden_now(self, num_output_tokens: int) -> tuple[int, ...]:
        """The token ids this sequence may not sample with `num_output_tokens` output tokens so far."""
        return self.forbidden_ids if num_output_tokens < self.min_tokens else ()


@dataclass(frozen=True, slots=True)
class NewSeq:
    """A sequence the worker does not know yet (first scheduled, or resumed after preemption).

    The worker computes tokens `token_ids[start:start + num_new]` at those positions, writing their K/V into
    the slots of `block_ids`; with `sample` set the chunk reaches the last known token and the worker samples
    the next one.
    """

    request_id: str
    token_ids: tuple[int, ...]  # every known token: the prompt, plus the output so far after a preemption
    num_prompt_tokens: int
    block_ids: tuple[int, ...]  # the whole block table
    start: int  # tokens already in the cache (a prefix-cache hit), where this step's tokens begin
    num_new: int
    sample: bool
    sampling: SamplingOptions
    # speculative decoding: proposed tokens after the last known one, the last `len(draft_token_ids)` of
    # `num_new` (their logits verify them; engine.spec_decode)
    draft_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CachedSeq:
    """A sequence the worker already holds: only what changed since it last ran."""

    request_id: str
    new_token_ids: tuple[int, ...]  # tokens appended by the engine since the worker last saw this sequence
    new_block_ids: tuple[int, ...]  # blocks appended to its block table
    start: int
    num_new: int
    sample: bool
    draft_token_ids: tuple[int, ...] = ()  # as in NewSeq
    # speculative decoding: the block table was cut to this many entries since the worker last saw it (blocks
    # of rejected drafts freed); the worker cuts its copy before appending `new_block_ids`. -1: not cut.
    trim_blocks_to: int = -1


ScheduledSeq = NewSeq | CachedSeq


@dataclass(frozen=True, slots=True)
class GrammarRows:
    """The token bitmasks of a step's grammar-constrained sampling sequences (structured output): row i of
    `bitmask` ([G, ceil(vocab / 32)] int32, bit t of the row = token t allowed) is `request_ids[i]`'s. Made
    by the engine from each sequence's grammar matcher; only the sampling rank reads it, so the codec does not
    carry it to tensor-parallel ranks > 0."""

    request_ids: tuple[str, ...]
    bitmask: Any  # numpy int32 [G, W]


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """One step: the scheduled sequences in batch order, what the worker must forget, and step statistics.

    The worker drops its copy of every sequence in `finished_ids` and `preempted_ids`; a preempted sequence
    keeps its place in its random stream (its seeded generator), so its output does not depend on preemption.
    """

    seqs: tuple[ScheduledSeq, ...]
    finished_ids: tuple[str, ...]  # finished (or aborted) since the last step
    preempted_ids: tuple[str, ...]  # preempted by this step's scheduling
    num_scheduled_tokens: int
    num_prompt_tokens: int  # tokens of prefill work (prompt or recompute) in this step
    prefix_cache_queries: int  # tokens looked up in the prefix cache this step
    prefix_cache_hits: int  # of those, tokens found
    grammar: GrammarRows | None = None  # bitmasks of the sampling sequences that have a grammar


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """The logprobs of prompt tokens `first_position ..` of one sequence, computed by one prefill chunk.

    A chunk covering prompt positions [start, end) has the logits that predict tokens start + 1 .. end
    (the last one only while it is still a prompt token), so `first_position` = start + 1 and position 0,
    which nothing predicts, never appears. After a preemption the recompute sends positions again; the
    engine keeps the first copy of each."""

    request_id: str
    first_position: int
    entries: tuple[TokenLogprob, ...]


@dataclass(frozen=True, slots=True)
class RunnerOutput:
    """What the worker sampled: for each sampling sequence, in batch order, its new tokens (one, or with
    speculative decoding the accepted drafts plus one) and, when asked for, their logprobs; and the prompt
    logprobs of the sequences that asked for them (`SamplingOptions.prompt_logprobs`), chunk by chunk."""

    request_ids: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    logprobs: tuple[tuple[TokenLogprob, ...] | None, ...]
    prompt_logprobs: tuple[PromptLogprobs, ...] = ()

    @classmethod
    def empty(cls) -> "RunnerOutput":
        return cls((), (), ())
