"""The engine loop: admit requests, run steps, turn sampled tokens into text deltas and finished sequences.

`LLMEngine` is single-threaded: whoever drives it (the offline `LLM`, the HTTP server's engine thread)
calls `add_request` / `abort_request` between calls of `step()`. One step = schedule -> launch the model
step -> append the sampled tokens -> detokenize -> check stop conditions -> free what finished.

With asynchronous scheduling (`async_scheduling`, on by default on CUDA) the tokens a step appends are those
of the *previous* model step: `step()` schedules and launches step N+1 first, so the host's scheduling and
batch preparation overlap the device's work on step N, then waits for step N's tokens and processes them
while the device runs step N+1. The scheduler counts the in-flight tokens as pending (`Request.
num_pending_tokens`) and the worker takes their values on the device, so the output is exactly that of the
synchronous loop; a token sampled for a sequence that finished meanwhile is dropped (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from .config import EngineArgs, EngineConfig
from .detokenizer import IncrementalDetokenizer
from .core.kv_cache_manager import KVCacheManager
from .executor import build_executor
from .worker.model_runner import PendingOutput
from .outputs import IterationStats, SequenceDelta, StepOutput, TokenLogprob
from .core.request import Request, RequestStatus
from .sampling_params import ParamError, SamplingParams
from .core.scheduler import Scheduler
from .step import GrammarRows, SchedulerOutput
from .step_cost import model_cost, scheduled_cost
from .structured.compiler import GrammarCompiler
from .structured.matcher import SequenceGrammar, fill_bitmasks

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _SeqState:
    """Engine-side companions of a running sequence: its detokenizer and, with structured output, its grammar
    matcher (kept here across preemption: the sequence's tokens do not change, so neither does its state)."""

    detok: IncrementalDetokenizer | None
    grammar: SequenceGrammar | None = None


@dataclass(eq=False)
class _LaunchedStep:
    """A model step whose tokens have not been processed yet."""

    output: PendingOutput
    requests: dict[str, Request]  # the sampling sequences' requests when the step was launched
    num_drafts: dict[str, int]  # speculative decoding: sequences sent drafts -> how many
    prompt_requests: dict[str, Request]  # sequences computing prompt logprobs in the step


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_config = config.model
        self.tokenizer = None
        if config.model.tokenizer is not None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer)
        self.drafter = None  # speculative method "draft": the draft model, loaded before the target sizes its cache
        if config.speculative is not None and config.speculative.method == "draft":
            from .spec_decode.draft_model import DraftProposer

            self.drafter = DraftProposer(config.draft_model, config.device, config.attention_backend, config.seed)
        self.executor = build_executor(config)  # one ModelRunner in-process, or tensor-parallel ranks
        if self.drafter is not None:
            self.drafter.allocate(self.executor.num_kv_blocks, config.cache.block_size)
        self.kv = KVCacheManager(self.executor.num_kv_blocks, config.cache.block_size,
                                 config.cache.enable_prefix_caching, windows=config.model.group_windows,
                                 max_chunk_tokens=config.scheduler.max_num_batched_tokens)
        self.scheduler = Scheduler(config.scheduler, self.kv)
        self.cost_model = model_cost(config.model)  # for each step's FLOPs and bytes (IterationStats.cost)
        eos = set(config.model.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(eos))
        self._states: dict[str, _SeqState] = {}
        self._children: dict[str, list[str]] = {}  # parent request id -> its sequences' ids
        # n > 1 with prompt logprobs: parent request id -> its sequence that computes them
        self._first_sibling: dict[str, Request] = {}
        self._pending: list[SequenceDelta] = []  # deltas produced between steps (aborts)
        self.async_scheduling = config.async_scheduling
        self._in_flight: _LaunchedStep | None = None  # asynchronous scheduling: the step launched last
        # structured output: grammars compiled for this vocabulary (thread-safe: the server compiles off-thread)
        self.grammars = GrammarCompiler(self.tokenizer, config.model.vocab_size, self.eos_token_ids)
        self._grammar_seqs: set[str] = set()  # live sequences with a grammar
        self.speculative = config.speculative
        self.proposer = None
        if self.speculative is not None and self.drafter is None:
            from .spec_decode import NgramProposer

            sc = self.speculative
            self.proposer = NgramProposer(sc.num_speculative_tokens, sc.prompt_lookup_min, sc.prompt_lookup_max)
        self._verified: list[tuple[int, int]] = []  # this step's (drafts, accepted) per sequence sent drafts

    @classmethod
    def from_args(cls, args: EngineArgs | None = None, **kwargs) -> "LLMEngine":
        return cls((args or EngineArgs(**kwargs)).resolve())

    @property
    def runner(self):
        """The model runner in this process (rank 0's under tensor parallelism)."""
        return self.executor.runner

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes, if any (idempotent; also done when the engine is
        garbage-collected or the interpreter exits)."""
        self.executor.shutdown()

    @property
    def max_model_len(self) -> int:
        return self.config.scheduler.max_model_len

    # ---- requests ---------------------------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ParamError("prompt", "this model has no tokenizer; send token ids")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None, cache_salt: str | None = None) -> list[int]:
        """Validate and queue a request (n sequences). Raises `ValueError` (a `ParamError` naming the
        parameter) and changes nothing when the request is invalid. Returns the prompt's token ids."""
        if request_id in self._children:
            raise ParamError("request_id", f"{request_id!r} is already in use")
        prompt_ids = self.tokenize(prompt)
        max_tokens = self.validate(prompt_ids, params)
        if params.stop and self.tokenizer is None:
            raise ParamError("stop", "stop strings need a tokenizer; this model has none")
        arrival = time.time() if arrival_time is None else arrival_time
        ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        # Sequence ids share one namespace with request ids ("x" with n=2 runs "x#0", "x#1"): check them
        # all before queueing any, so a clash can neither leave half a request running nor join another's.
        in_use = {rid for seq_ids in self._children.values() for rid in seq_ids}
        taken = next((rid for rid in ids if rid in in_use), None)
        if taken is not None:
            raise ParamError("request_id", f"{request_id!r} clashes with sequence {taken!r} of a request in progress")
        compiled = None
        if params.structured_outputs is not None:
            compiled = self.grammars.compile(params.structured_outputs)  # a cache hit when the server compiled it
        share = params.n > 1 and self.config.cache.enable_prefix_caching and len(prompt_ids) > self.config.cache.block_size
        # with prompt logprobs the first sequence computes them and the others start after its prefill, so
        # that each one's first delta can carry them
        share = share or (params.n > 1 and params.prompt_logprobs is not None)
        for i, rid in enumerate(ids):
            req = Request(rid, prompt_ids, params, max_tokens, self.eos_token_ids, parent_id=request_id, index=i,
                          seed=None if params.seed is None else params.seed + i, cache_salt=cache_salt,
                          wait_for=ids[0] if share and i > 0 else None, arrival_time=arrival)
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, prompt_ids, params.stop, params.include_stop_str_in_output,
                                               params.skip_special_tokens)
            self._states[rid] = _SeqState(detok, None if compiled is None else SequenceGrammar(compiled))
            if compiled is not None:
                self._grammar_seqs.add(rid)
            if i == 0 and params.n > 1 and params.prompt_logprobs is not None:
                self._first_sibling[request_id] = req
            self.scheduler.add_request(req)
        self._children[request_id] = ids
        return prompt_ids

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Check a prompt against the model and cache; returns the effective max_tokens."""
        params.validate()
        if not prompt_ids:
            raise ParamError("prompt", "must not be empty")
        vocab = self.model_config.vocab_size
        bad = next((t for t in prompt_ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ParamError("prompt", f"token id {bad!r} is outside the vocabulary [0, {vocab})")
        bad = next((t for t in params.stop_token_ids if t >= vocab), None)
        if bad is not None:
            raise ParamError("stop_token_ids", f"token id {bad} is outside the vocabulary [0, {vocab})")
        bad = next((t for t in params.logit_bias or () if t >= vocab), None)
        if bad is not None:
            raise ParamError("logit_bias", f"token id {bad} is outside the vocabulary [0, {vocab})")
        n, limit = len(prompt_ids), self.max_model_len
        if n >= limit:
            raise ParamError("prompt", f"the prompt has {n} tokens, but the context window is {limit} tokens "
                                       "(at least one must be left to generate)")
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - n
        if params.min_tokens > max_tokens:  # only possible when max_tokens is None: checked against the context
            raise ParamError("min_tokens", f"the prompt ({n} tokens) leaves {max_tokens} tokens of the context "
                                           f"window of {limit}, fewer than min_tokens ({params.min_tokens})")
        if n + max_tokens > limit:
            raise ParamError("max_tokens", f"the prompt ({n} tokens) plus max_tokens ({max_tokens}) is "
                                           f"{n + max_tokens} tokens, over the context window of {limit} tokens")
        blocks = self.kv.num_blocks_for(n + max(max_tokens, 1) - 1)  # the last sampled token's K/V is never stored
        if blocks > self.kv.num_blocks:
            raise ParamError("max_tokens", f"the prompt ({n} tokens) plus max_tokens ({max_tokens}) needs {blocks} "
                                           f"KV blocks, but the whole cache has {self.kv.num_blocks}")
        return max_tokens

    def abort_request(self, request_id: str) -> bool:
        """Stop a request's sequences and free their blocks; their final deltas (finish_reason "abort")
        come out of the next `step()`. Returns False if the request is unknown or already finished."""
        ids = self._children.pop(request_id, None)
        if ids is None:
            return False
        self._first_sibling.pop(request_id, None)
        now = time.time()
        for rid in ids:
            req = self.scheduler.finish_request(rid, RequestStatus.FINISHED_ABORTED)
            self._drop_state(rid)
            if req is not None:
                self._pending.append(self._delta(req, [], "", None, now, "abort"))
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._children) or bool(self._pending)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._children)

    # ---- one step ---------------------------------------------------------------------------------------------
    def step(self) -> StepOutput:
        """Schedule and launch one model step; return the deltas of the tokens processed in this call (the
        launched step's own, or with asynchronous scheduling the previous step's)."""
        t0 = time.perf_counter()
        deltas, self._pending = self._pending, []
        num_generated = 0
        # A grammar's next bitmask needs the token sampled last: while any sequence has one, each step's tokens
        # are processed before the next step is scheduled (asynchronous scheduling pauses, for every sequence).
        if self._in_flight is not None and (not self.async_scheduling or self._grammar_seqs):
            num_generated += self._process(self._in_flight, deltas)
            self._in_flight = None
        if self.speculative is not None:
            self._propose_drafts()
        sched = self._with_grammar(self.scheduler.schedule())
        if self.drafter is not None:
            for rid in sched.preempted_ids:  # resumed, it is prefilled again, by the draft too
                self.drafter.free(rid)
        requests = self.scheduler.requests
        launched = _LaunchedStep(self.executor.execute_async(sched),
                                 {s.request_id: requests[s.request_id] for s in sched.seqs if s.sample},
                                 {s.request_id: len(s.draft_token_ids) for s in sched.seqs if s.draft_token_ids},
                                 {s.request_id: requests[s.request_id] for s in sched.seqs
                                  if requests[s.request_id].prompt_logprobs is not None})
        self.scheduler.on_step_done(sched)
        if self.async_scheduling:
            done, self._in_flight = self._in_flight, launched
        else:
            done = launched
        if done is not None:
            num_generated += self._process(done, deltas)
        pool = self.kv.pool
        stats = IterationStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            kv_blocks_used=pool.num_used_blocks, kv_blocks_total=pool.num_blocks,
            num_scheduled_tokens=sched.num_scheduled_tokens, num_prompt_tokens=sched.num_prompt_tokens,
            num_generation_tokens=num_generated, num_preemptions=len(sched.preempted_ids),
            prefix_cache_queries=sched.prefix_cache_queries, prefix_cache_hits=sched.prefix_cache_hits,
            step_time_s=time.perf_counter() - t0, cost=scheduled_cost(self.cost_model, sched),
            spec_decode=self._spec_stats(),
        )
        return StepOutput(deltas, stats)

    # ---- speculative decoding -------------------------------------------------------------------------------
    def _propose_drafts(self) -> None:
        """Give each decoding request its drafts for the coming step (engine.spec_decode), unless the batch is
        too large for speculation to pay. Drafts never take a request past max_tokens or the context window:
        k drafts yield at most k + 1 tokens."""
        running = self.scheduler.running
        if len(running) > self.speculative.disable_by_batch_size:
            return
        wanted = []
        for req in running:
            if req.num_computed_tokens != req.num_tokens - 1 or req.num_pending_tokens:
                continue  # prefilling: drafts follow the last known token only
            if req.request_id in self._grammar_seqs:
                continue  # a grammar's bitmask is known for the next position only: no drafts to verify
            limit = min(req.max_tokens - req.num_output_tokens, self.max_model_len - req.num_tokens) - 1
            if limit > 0:
                wanted.append((req, limit))
        if self.drafter is not None:  # one batched pass per draft position over every sequence
            k = self.speculative.num_speculative_tokens
            drafts = self.drafter.propose([(r.request_id, r.all_token_ids, min(k, n)) for r, n in wanted])
            for req, _ in wanted:
                req.draft_token_ids = drafts.get(req.request_id, [])
        else:
            for req, limit in wanted:
                req.draft_token_ids = self.proposer.propose(req.all_token_ids, limit)

    def _spec_stats(self):
        if self.speculative is None:
            return None
        from .spec_decode import SpecDecodeStats

        verified, self._verified = self._verified, []
        return SpecDecodeStats.of(verified, self.speculative.num_speculative_tokens)

    def _process(self, step: _LaunchedStep, deltas: list[SequenceDelta]) -> int:
        """Append a finished model step's tokens (waiting for them); returns how many were appended."""
        result = step.output.result()
        now = time.time()
        num_generated = 0
        for chunk in result.prompt_logprobs:  # before the tokens: a first token's delta carries them all
            req = step.prompt_requests[chunk.request_id]
            if self.scheduler.requests.get(chunk.request_id) is req:
                req.add_prompt_logprobs(chunk.first_position, chunk.entries)
        for rid, tokens, logprobs in zip(result.request_ids, result.token_ids, result.logprobs):
            req = step.requests[rid]
            if self.scheduler.requests.get(rid) is not req:
                continue  # finished or aborted since the step was launched: its token is nobody's
            if req.max_tokens == 0:  # prefill only (prompt logprobs): the sampled token is nobody's either
                deltas.append(self._finish(req, "length", "", now, []))
                continue
            num_drafts = step.num_drafts.get(rid, 0)
            if num_drafts:
                accepted = len(tokens) - 1
                self.scheduler.on_verified(req, num_drafts - accepted)
                self._verified.append((num_drafts, accepted))
            for j, token in enumerate(tokens):
                delta = self._append_token(req, token, None if logprobs is None else logprobs[j], now)
                deltas.append(delta)
                num_generated += 1
                if delta.finished:
                    break
            if self.drafter is not None and not delta.finished:  # the draft keeps what the target accepted
                self.drafter.sync(rid, req.all_token_ids)
        return num_generated

    def _append_token(self, req: Request, token: int, logprob: TokenLogprob | None, now: float) -> SequenceDelta:
        req.append_output_token(token, now)
        p = req.params
        state = self._states[req.request_id]
        reason: str | None = None
        text = ""
        num_output = req.num_output_tokens
        enough = num_output >= p.min_tokens
        if enough and not p.ignore_eos and token in self.eos_token_ids:
            reason = "stop"
        elif enough and token in p.stop_token_ids:
            reason, req.stop_reason = "stop", token
        elif state.detok is not None:
            text = state.detok.push(token, check_stop=enough)
            if state.detok.stopped_by is not None:
                reason, req.stop_reason = "stop", state.detok.stopped_by
        if reason is None and state.grammar is not None:
            if not state.grammar.accept(token):  # the mask makes this impossible; end rather than go astray
                logger.error("%s: token %d is outside its grammar; ending the sequence", req.request_id, token)
                reason = "stop"
            elif state.grammar.terminated:
                reason = "stop"
        if reason is None and (num_output >= req.max_tokens or req.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None:
            return self._finish(req, reason, text, now, [token], [logprob] if logprob is not None else None)
        return self._delta(req, [token], text, [logprob] if logprob is not None else None, now, reason,
                           self._prompt_logprobs_of(req))

    def _finish(self, req: Request, reason: str, text: str, now: float, tokens: list[int],
                logprobs: list[TokenLogprob] | None = None) -> SequenceDelta:
        state = self._states[req.request_id]
        if state.detok is not None and state.detok.stopped_by is None:
            text += state.detok.flush()
        status = RequestStatus.FINISHED_STOPPED if reason == "stop" else RequestStatus.FINISHED_LENGTH
        prompt_lps = self._prompt_logprobs_of(req)  # before the request is forgotten (its first sibling's)
        self.scheduler.finish_request(req.request_id, status)
        self._drop_state(req.request_id)
        self._forget_child(req)
        return self._delta(req, tokens, text, logprobs, now, reason, prompt_lps)

    def _prompt_logprobs_of(self, req: Request) -> tuple[TokenLogprob | None, ...] | None:
        """The prompt logprobs for a sequence's first delta (None on any later one, or when not asked for).
        Sequence 0 of the request computed them; the others started after its prefill had."""
        if req.params.prompt_logprobs is None or req.num_output_tokens > 1:
            return None
        first = req if req.index == 0 else self._first_sibling.get(req.parent_id)
        if first is None or first.prompt_logprobs is None:
            return None
        assert len(first.prompt_logprobs) == req.num_prompt_tokens, f"{req.request_id}: prompt logprobs incomplete"
        return tuple(first.prompt_logprobs)

    def _drop_state(self, rid: str) -> None:
        self._states.pop(rid, None)
        self._grammar_seqs.discard(rid)
        if self.drafter is not None:
            self.drafter.free(rid)

    def _with_grammar(self, sched: SchedulerOutput) -> SchedulerOutput:
        """The step with the bitmasks of its sampling sequences that have a grammar."""
        if not self._grammar_seqs:
            return sched
        ids = [s.request_id for s in sched.seqs if s.sample and s.request_id in self._grammar_seqs]
        if not ids:
            return sched
        grammars = [self._states[rid].grammar for rid in ids]
        bitmask = fill_bitmasks(grammars, self.model_config.vocab_size)
        return dataclasses.replace(sched, grammar=GrammarRows(tuple(ids), bitmask))

    def _forget_child(self, req: Request) -> None:
        siblings = self._children.get(req.parent_id)
        if siblings is not None and all(s not in self.scheduler.requests for s in siblings):
            del self._children[req.parent_id]
            self._first_sibling.pop(req.parent_id, None)

    def _delta(self, req: Request, tokens, text, logprobs, now, reason, prompt_logprobs=None) -> SequenceDelta:
        return SequenceDelta(
            request_id=req.parent_id, index=req.index, new_token_ids=tokens, new_text=text, new_logprobs=logprobs,
            token_time=now, num_prompt_tokens=req.num_prompt_tokens, num_output_tokens=req.num_output_tokens,
            num_cached_tokens=max(req.num_cached_tokens, 0), finish_reason=reason, stop_reason=req.stop_reason,
            times=req.times(), prompt_logprobs=prompt_logprobs,
        )
