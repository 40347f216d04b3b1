"""Continuous batching under one token budget: which requests run this step, and how many tokens each.

Each step the scheduler walks the running requests first (oldest first), giving each the tokens it still
has to compute (1 for a decode, the rest of a prompt or a chunk of it for a prefill), then admits waiting
requests first-come first-served while the token budget, `max_num_seqs` and the KV blocks allow. When a
running request cannot get the blocks it needs, the newest running request is preempted by recompute: its
blocks are freed, its progress reset, and it goes back to the front of the waiting queue. A preempted
request is never failed; when it returns, the prefix cache usually gives most of its blocks back.

With asynchronous scheduling the next step is scheduled before the previous step's sampled tokens reach the
engine: those tokens count as the request's `num_pending_tokens` (set in `on_step_done`, cleared as the
engine appends them), a decoding request is scheduled one token past its known ones, and one whose pending
token ends it by length is not scheduled again.

With speculative decoding a decoding request may bring draft tokens (`Request.draft_token_ids`, set by
the engine for this step only): it is then scheduled for 1 + k tokens, clipped to the token budget, if the
KV blocks for all of them are free (otherwise it decodes without drafts; drafts never preempt anyone). After
the step the engine reports how many drafts were rejected (`on_verified`): the computed count goes back and
the blocks wholly past it are freed.

A request that wants prompt logprobs (`SamplingParams.prompt_logprobs`) and does not hold them all yet is
admitted without a prefix-cache lookup: every prompt position must run through the model to have logits.
Its blocks are still cached for others, and once it holds them all (after a preemption) it looks up again.

The scheduler owns the queues and request statuses; the KV-cache manager owns blocks.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from ..config import SchedulerConfig
from ..step import CachedSeq, NewSeq, ScheduledSeq, SchedulerOutput
from .kv_cache_manager import KVCacheManager
from .request import Request, RequestStatus


@dataclass
class Scheduler:
    config: SchedulerConfig
    kv: KVCacheManager
    waiting: deque[Request] = field(default_factory=deque)
    running: list[Request] = field(default_factory=list)
    requests: dict[str, Request] = field(default_factory=dict)
    _finished_since_step: list[str] = field(default_factory=list)
    # What the worker holds of each sequence it knows: (token count, block count). A sequence missing here
    # is sent whole (NewSeq), one present only as what changed since (CachedSeq).
    _synced: dict[str, tuple[int, int]] = field(default_factory=dict)
    _drafts: dict[str, tuple[int, ...]] = field(default_factory=dict)  # this step's drafts, while scheduling
    _trim_to: dict[str, int] = field(default_factory=dict)  # block tables cut since the worker last saw them
    num_preemptions_total: int = 0

    # ---- queue management -------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id: {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """Take a request out of its queue, free its blocks and mark it finished (no-op if unknown)."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        request.status = status
        request.finished_time = time.time()
        self.kv.free(request)
        self._finished_since_step.append(request_id)
        self._synced.pop(request_id, None)
        self._trim_to.pop(request_id, None)
        return request

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    # ---- one step -----------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted: list[str] = []
        queries = hits = 0

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            if request.num_pending_tokens and self._finishes_on_pending(request):
                i += 1  # its last token is being sampled by the step in flight: nothing left to compute
                continue
            num_new = min(len(request.all_token_ids) + request.num_pending_tokens - request.num_computed_tokens,
                          budget)
            assert num_new > 0, f"running request {request.request_id} has nothing to compute"
            drafts, request.draft_token_ids = request.draft_token_ids, []  # proposed for this step only
            if drafts and num_new == 1 and not request.num_pending_tokens and budget > 1:
                drafts = drafts[:budget - 1]
                if self.kv.allocate_slots(request, 1 + len(drafts)) is not None:
                    scheduled.append((request, 1 + len(drafts)))
                    self._drafts[request.request_id] = tuple(drafts)
                    budget -= 1 + len(drafts)
                    i += 1
                    continue
                # not enough free blocks for the drafts: decode without them rather than preempt anyone
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            if request.status != RequestStatus.RUNNING:
                break
            scheduled.append((request, num_new))
            budget -= num_new
            i += 1

        if not preempted:
            skipped: list[Request] = []
            while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
                request = self.waiting.popleft()
                # A request preempted while its last sampled token was in flight waits for that token.
                if request.num_pending_tokens or self._waits_for_sibling(request):
                    skipped.append(request)
                    continue
                lookup = self.kv.enable_caching and not request.needs_prompt_logprobs
                # prompt logprobs need every prompt position's logits: such a request computes them all
                hit_blocks, num_hit = self.kv.get_computed_blocks(request) if lookup else ([], 0)
                num_new = min(request.num_tokens - num_hit, budget)
                if self.kv.allocate_slots(request, num_new, hit_blocks) is None:
                    self.waiting.appendleft(request)
                    break
                queries += request.num_tokens if lookup else 0
                hits += num_hit
                request.num_computed_tokens = num_hit
                if request.num_cached_tokens < 0:
                    request.num_cached_tokens = num_hit
                if request.first_scheduled_time is None:
                    request.first_scheduled_time = time.time()
                request.status = RequestStatus.RUNNING
                self.running.append(request)
                scheduled.append((request, num_new))
                budget -= num_new
            self.waiting.extendleft(reversed(skipped))

        seqs: list[ScheduledSeq] = []
        num_prompt = 0
        drafts, self._drafts = self._drafts, {}
        for request, num_new in scheduled:
            start = request.num_computed_tokens
            seq_drafts = drafts.get(request.request_id, ())
            if not (num_new - len(seq_drafts) == 1 and start >= request.num_prompt_tokens):  # not a decode
                num_prompt += num_new
            seqs.append(self._scheduled_seq(request, start, num_new, seq_drafts))
        finished, self._finished_since_step = self._finished_since_step, []
        return SchedulerOutput(tuple(seqs), tuple(finished), tuple(preempted),
                               self.config.max_num_batched_tokens - budget, num_prompt, queries, hits)

    def _scheduled_seq(self, request: Request, start: int, num_new: int,
                       drafts: tuple[int, ...] = ()) -> ScheduledSeq:
        """The request's share of the step, as the worker needs it: whole the first time, then the change."""
        rid, tokens = request.request_id, request.all_token_ids
        block_ids = self.kv.block_ids(rid)
        sample = start + num_new - len(drafts) == len(tokens) + request.num_pending_tokens
        synced = self._synced.get(rid)
        self._synced[rid] = (len(tokens), len(block_ids))
        if synced is None:
            assert not request.num_pending_tokens, f"{rid}: sent whole while a sampled token is in flight"
            return NewSeq(rid, tuple(tokens), request.num_prompt_tokens, tuple(block_ids), start, num_new, sample,
                          request.worker_sampling(), drafts)
        num_tokens, num_blocks = synced
        return CachedSeq(rid, tuple(tokens[num_tokens:]), tuple(block_ids[num_blocks:]), start, num_new, sample,
                         drafts, self._trim_to.pop(rid, -1))

    def on_step_done(self, out: SchedulerOutput) -> None:
        """The runner computed (or, with asynchronous scheduling, was launched to compute) the scheduled
        tokens: advance each request's progress, and count the token each sampling sequence will get as
        pending until the engine appends it."""
        for seq in out.seqs:
            request = self.requests.get(seq.request_id)
            if request is not None:
                request.num_computed_tokens = seq.start + seq.num_new
                if seq.sample:
                    request.num_pending_tokens += 1

    def on_verified(self, request: Request, num_rejected: int) -> None:
        """Speculative decoding: `num_rejected` of the request's drafts in the last step were wrong. Their K/V
        is in the cache past the accepted tokens; rolling the computed count back makes the next step compute
        those positions again, writing over it. The blocks wholly past the accepted tokens are freed at once
        (the request then holds what it would hold without speculation), and the worker is told to cut its
        copy of the block table (`CachedSeq.trim_blocks_to`) before it appends the next new blocks."""
        request.num_computed_tokens -= num_rejected
        rid = request.request_id
        length = self.kv.trim(request)
        synced = self._synced.get(rid)
        if synced is not None and length < synced[1]:
            self._synced[rid] = (synced[0], length)
            self._trim_to[rid] = min(length, self._trim_to.get(rid, length))

    # ---- helpers ------------------------------------------------------------------------------------------
    # A request's tokens for scheduling are the known ones plus those sampled by steps in flight:
    # len(all_token_ids) + num_pending_tokens.
    def _finishes_on_pending(self, request: Request) -> bool:
        """Whether a token still in flight is certain to end the request by length (max_tokens or the context
        window): scheduling another step for it would compute a token nobody gets (and could need a block
        beyond what `LLMEngine.validate` reserved)."""
        pending = request.num_pending_tokens
        return bool(pending) and (request.num_output_tokens + pending >= request.max_tokens
                                  or request.num_tokens + pending >= self.config.max_model_len)

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        self._synced.pop(request.request_id, None)
        self._trim_to.pop(request.request_id, None)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)

    def _waits_for_sibling(self, request: Request) -> bool:
        """A later sibling of an n > 1 request waits until the first sibling's prompt is in the cache, so
        that it reuses those blocks instead of computing the same prompt again."""
        if request.wait_for is None:
            return False
        first = self.requests.get(request.wait_for)
        if first is None or first.num_computed_tokens >= first.num_prompt_tokens:
            request.wait_for = None
            return False
        return True
