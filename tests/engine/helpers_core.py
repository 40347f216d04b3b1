"""Helpers shared by the engine-core tests (block pool, KV-cache manager, scheduler, state machines).

`run_step` is a fake model runner: it runs one scheduler step and, for every sequence that samples, appends
`next_token(request)`, a deterministic function of the request's tokens. So a request's output depends only
on its prompt, never on what else ran beside it or on preemption, and two equal prompts give equal outputs.
"""

from __future__ import annotations

from engine.core.block_pool import BlockPool
from engine.core.kv_cache_manager import NULL_BLOCK_ID, KVCacheManager, cdiv, hash_block
from engine.core.kv_groups import first_needed_block
from engine.core.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.core.scheduler import Scheduler
from engine.step import SchedulerOutput

BLOCK_SIZE = 4


def make_request(request_id: str, prompt: list[int], max_tokens: int = 4, *, wait_for: str | None = None,
                 cache_salt: str | None = None) -> Request:
    return Request(request_id, list(prompt), SamplingParams(max_tokens=max_tokens, temperature=0.0), max_tokens,
                   wait_for=wait_for, cache_salt=cache_salt)


def next_token(request: Request) -> int:
    """The fake model: the next token is a function of every token so far."""
    return next_token_of(request.all_token_ids)


def next_token_of(tokens: list[int]) -> int:
    return (sum(tokens) * 31 + len(tokens)) % 97


def solo_output(prompt: list[int], max_tokens: int) -> list[int]:
    """The tokens `run_step` gives a prompt when nothing else runs."""
    req = make_request("solo", prompt, max_tokens)
    for _ in range(max_tokens):
        req.append_output_token(next_token(req), now=0.0)
    return req.output_token_ids


def run_step(sched: Scheduler) -> SchedulerOutput:
    """schedule -> "run" -> on_step_done -> append sampled tokens -> finish those at max_tokens."""
    out = sched.schedule()
    complete_step(sched, out)
    return out


def complete_step(sched: Scheduler, out: SchedulerOutput) -> None:
    """The fake runner's half of a step: tokens computed, one sampled per sampling sequence."""
    sched.on_step_done(out)
    for seq in out.seqs:
        if seq.sample:
            req = sched.requests[seq.request_id]
            req.append_output_token(next_token(req), now=0.0)
            if req.num_output_tokens >= req.max_tokens:
                sched.finish_request(req.request_id, RequestStatus.FINISHED_LENGTH)


def queue_ids(pool: BlockPool) -> list[int]:
    """Free-queue block ids, head (next to be handed out) first."""
    return [b.block_id for b in pool.free_queue]


def seq_view(out: SchedulerOutput) -> list[tuple[str, int, int, bool]]:
    """(request_id, start, num_new, sample) of each scheduled sequence, in schedule order."""
    return [(s.request_id, s.start, s.num_new, s.sample) for s in out.seqs]


def chained_hashes(tokens: list[int], block_size: int, salt: str | None = None) -> list[bytes]:
    """The prefix-cache key of every full block of `tokens`, computed here independently of the manager."""
    out: list[bytes] = []
    for i in range(len(tokens) // block_size):
        out.append(hash_block(out[-1] if out else None, tokens[i * block_size:(i + 1) * block_size], salt))
    return out


def assert_kv_consistent(sched: Scheduler) -> None:
    """Everything that must hold between two steps, for the pool, the manager and the scheduler together."""
    kv, pool = sched.kv, sched.kv.pool
    pool.check_invariants()

    # Queues: every live request is in exactly one queue, with a status that matches it.
    running_ids = [r.request_id for r in sched.running]
    waiting_ids = [r.request_id for r in sched.waiting]
    assert sorted(running_ids + waiting_ids) == sorted(sched.requests), "a request is lost or in two queues"
    assert all(r.status == RequestStatus.RUNNING for r in sched.running)
    assert all(r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED) for r in sched.waiting)
    assert len(sched.running) <= sched.config.max_num_seqs

    # Blocks: a running request holds exactly the blocks its computed tokens fill (in every KV-cache group,
    # interleaved), less those a window group released: only ever a leading run that no query reads again.
    assert set(kv.req_to_blocks) <= set(running_ids), "a request that is not running holds blocks"
    holders: dict[int, list[str]] = {}
    groups = kv.num_groups
    for req in sched.running:
        blocks = kv.req_to_blocks.get(req.request_id, [])
        assert len(blocks) == groups * cdiv(req.num_computed_tokens, kv.block_size), \
            f"{req.request_id}: {len(blocks)} blocks for {req.num_computed_tokens} computed tokens"
        assert kv.block_ids(req.request_id) == [NULL_BLOCK_ID if b is None else b.block_id for b in blocks], \
            "block table out of step"
        real = [b for b in blocks if b is not None]
        assert len({b.block_id for b in real}) == len(real), "a block appears twice in one request"
        hashes = chained_hashes(req.all_token_ids, kv.block_size, req.cache_salt)
        for i, b in enumerate(blocks):
            logical, group = divmod(i, groups)
            if b is None:
                window = kv.windows[group]
                assert window is not None and logical < first_needed_block(req.num_computed_tokens, window,
                                                                           kv.block_size), \
                    f"{req.request_id}: block {logical} of group {group} released but still read"
                continue
            holders.setdefault(b.block_id, []).append(req.request_id)
            # A cached block's content is the request's own content at that position.
            if b.block_hash is not None:
                assert b.block_hash == kv.cache_key(hashes[logical], group), \
                    f"{req.request_id} block {i} ({b}) holds another prefix"

    # Ref counts are exactly the number of holders; only a cached full block is shared.
    for b in pool.blocks:
        assert b.ref_cnt == len(holders.get(b.block_id, [])), f"{b} has holders {holders.get(b.block_id)}"
        if b.ref_cnt > 1:
            assert b.block_hash is not None, f"{b} is shared by {holders[b.block_id]} but is not a cached block"


def assert_all_free(kv: KVCacheManager) -> None:
    pool = kv.pool
    pool.check_invariants()
    assert pool.num_free_blocks == pool.num_blocks
    assert [b.ref_cnt for b in pool.blocks] == [0] * pool.num_blocks
    assert kv.req_to_blocks == {} and kv.req_to_block_ids == {}


def admit(kv, request_id: str, prompt: list[int], num_new: int | None = None, **kw):
    """What the scheduler does on first scheduling: look up the prefix cache, then allocate."""
    req = make_request(request_id, prompt, **kw)
    hits, num_hit = kv.get_computed_blocks(req)
    num_new = len(prompt) - num_hit if num_new is None else num_new
    assert kv.allocate_slots(req, num_new, hits) is not None
    req.num_computed_tokens = num_hit
    return req


def decode_one(kv, req, token: int = 99):
    """Mark the scheduled tokens computed, append a sampled token, and allocate room for it."""
    req.num_computed_tokens = req.num_tokens
    req.append_output_token(token, now=0.0)
    return kv.allocate_slots(req, 1)


def count_preemptions(engine) -> list[int]:
    """Wrap `engine.step` so that every step appends its preemption count to the returned list."""
    counts: list[int] = []
    original_step = engine.step

    def counting_step():
        out = original_step()
        counts.append(out.stats.num_preemptions)
        return out

    engine.step = counting_step
    return counts
