"""Continuous batching under one token budget: which requests run this step, and how many tokens each.

Each step the scheduler walks the running requests first (oldest first), giving each the tokens it still
has to compute (1 for a decode, the rest of a prompt or a chunk of it for a prefill), then admits waiting
requests first-come first-served while the token budget, `max_num_seqs` and the KV blocks allow. When a
running request cannot get the blocks it needs, the newest running request is preempted by recompute: its
blocks are freed, its progress reset, and it goes back to the front of the waiting queue. A preempted
request is never failed; when it returns, the prefix cache usually gives most of its blocks back.

The scheduler owns the queues and request statuses; the KV-cache manager owns blocks.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from .config import SchedulerConfig
from .kv_cache_manager import KVCacheManager
from .request import Request, RequestStatus
from .sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    """One request's share of a step, everything a model-runner worker needs to run it.

    The worker computes tokens `token_ids[start:start+num_new]` at positions `start..start+num_new-1`,
    writing their K/V into the slots given by `block_ids`. When `sample` is set the chunk reaches the end
    of the known tokens and the worker samples the next one. Lists are the request's live lists (no copy
    in-process); a multi-process runner would ship `token_ids[start:start+num_new]` instead.
    """

    request_id: str
    token_ids: list[int]
    start: int
    num_new: int
    block_ids: list[int]
    sample: bool
    num_prompt_tokens: int
    params: SamplingParams
    seed: int | None


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    seqs: list[ScheduledSeq]
    num_scheduled_tokens: int
    num_prompt_tokens: int  # tokens of prefill work (prompt or recompute) in this step
    preempted_ids: list[str]
    finished_ids: list[str]  # requests finished since the last step: workers drop their state
    prefix_cache_queries: int  # tokens looked up in the prefix cache this step
    prefix_cache_hits: int  # of those, tokens found


@dataclass
class Scheduler:
    config: SchedulerConfig
    kv: KVCacheManager
    waiting: deque[Request] = field(default_factory=deque)
    running: list[Request] = field(default_factory=list)
    requests: dict[str, Request] = field(default_factory=dict)
    _finished_since_step: list[str] = field(default_factory=list)
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
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            assert num_new > 0, f"running request {request.request_id} has nothing to compute"
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
                if self._waits_for_sibling(request):
                    skipped.append(request)
                    continue
                hit_blocks, num_hit = self.kv.get_computed_blocks(request)
                num_new = min(request.num_tokens - num_hit, budget)
                if self.kv.allocate_slots(request, num_new, hit_blocks) is None:
                    self.waiting.appendleft(request)
                    break
                queries += request.num_tokens if self.kv.enable_caching else 0
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

        seqs = []
        num_prompt = 0
        for request, num_new in scheduled:
            start = request.num_computed_tokens
            sample = start + num_new == request.num_tokens
            if not (num_new == 1 and start >= request.num_prompt_tokens):  # anything but a plain decode
                num_prompt += num_new
            seqs.append(ScheduledSeq(request.request_id, request.all_token_ids, start, num_new,
                                     self.kv.block_ids(request.request_id), sample, request.num_prompt_tokens,
                                     request.params, request.seed))
        finished, self._finished_since_step = self._finished_since_step, []
        return SchedulerOutput(seqs, self.config.max_num_batched_tokens - budget, num_prompt, preempted,
                               finished, queries, hits)

    def on_step_done(self, out: SchedulerOutput) -> None:
        """The runner computed the scheduled tokens: advance each request's progress."""
        for seq in out.seqs:
            request = self.requests.get(seq.request_id)
            if request is not None:
                request.num_computed_tokens = seq.start + seq.num_new

    # ---- helpers ------------------------------------------------------------------------------------------
    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
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
