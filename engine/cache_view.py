"""A bounded picture of the paged KV cache and the queues, for the live dashboard: `cache_snapshot(engine)`.

It reads the engine's live state, so it must run on the thread that owns the engine (the server runs it on
its engine thread between two steps: `server.engine_loop.EngineLoop.call`). It returns plain data.

The work is bounded whatever the pool's size, so a refresh never stalls the engine for long:

- at most `max_cells` blocks are inspected, one per cell of the grid. A pool of N > max_cells blocks is drawn
  one cell per `stride = ceil(N / max_cells)` blocks, each cell showing its group's first block, and the
  cached-free and shared counts are then estimates from those samples (`exact` is False). Free and in-use
  counts are always exact (the pool keeps them).
- at most `max_owner_entries` block-table entries are walked to colour cells by the request that holds them
  (`owners_complete` says whether every running request's table was walked).
- at most `max_listed` requests are listed per queue; the queues' lengths are always exact.

Cell states: "f" free (never used, or evicted), "c" cached-free (free, but still holding a prefix-cache entry
that a new request with the same prefix would reuse), "u" in use by one request, "s" shared (ref count >= 2:
several requests hold it through the prefix cache, e.g. the n choices of one prompt or a common system prompt).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MAX_CELLS = 4096
MAX_OWNER_ENTRIES = 65536
MAX_LISTED = 64


@dataclass(frozen=True, slots=True)
class RequestView:
    id: str  # the client's request id
    index: int  # which of its n choices
    status: str  # "running", "waiting" or "preempted"
    prompt_tokens: int
    output_tokens: int
    max_tokens: int
    computed_tokens: int  # tokens whose K/V are in the cache
    cached_tokens: int  # prompt tokens found in the prefix cache when first scheduled (-1: not yet)
    blocks: int
    preemptions: int
    slot: int  # colour slot: position in the running list, -1 when not running


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    num_blocks: int
    block_size: int
    stride: int  # blocks per grid cell
    cells: str  # one state letter per cell: f, c, u, s
    owners: list[int]  # per cell: the slot of a running request holding it, -1 for none
    owners_complete: bool
    exact: bool  # cached_free and shared are exact counts (stride 1), else estimates
    free: int
    cached_free: int
    used: int
    shared: int
    num_running: int
    num_waiting: int
    running: list[RequestView]
    waiting: list[RequestView]

    def to_dict(self) -> dict:
        return asdict(self)


def cache_snapshot(engine, max_cells: int = MAX_CELLS, max_owner_entries: int = MAX_OWNER_ENTRIES,
                   max_listed: int = MAX_LISTED) -> CacheSnapshot:
    pool, kv, sched = engine.kv.pool, engine.kv, engine.scheduler
    n = pool.num_blocks
    stride = -(-n // max_cells)
    ids = range(0, n, stride)
    blocks = pool.blocks
    states = []
    for bid in ids:
        b = blocks[bid]
        states.append("s" if b.ref_cnt > 1 else "u" if b.ref_cnt else "c" if b.block_hash is not None else "f")
    cells = "".join(states)

    running = list(sched.running)
    owners = [-1] * len(states)
    budget, complete = max_owner_entries, True
    for slot, req in enumerate(running):
        table = kv.block_ids(req.request_id)
        if len(table) > budget:
            complete = False
            break
        budget -= len(table)
        for bid in table:
            if bid % stride == 0 and owners[bid // stride] < 0:
                owners[bid // stride] = slot

    sampled_cached, sampled_shared = cells.count("c"), cells.count("s")
    exact = stride == 1
    scale = n / len(states)
    return CacheSnapshot(
        num_blocks=n, block_size=kv.block_size, stride=stride, cells=cells, owners=owners, owners_complete=complete,
        exact=exact, free=pool.num_free_blocks, used=pool.num_used_blocks,
        cached_free=sampled_cached if exact else round(sampled_cached * scale),
        shared=sampled_shared if exact else round(sampled_shared * scale),
        num_running=len(running), num_waiting=len(sched.waiting),
        running=[_view(kv, r, slot) for slot, r in enumerate(running[:max_listed])],
        waiting=[_view(kv, r, -1) for _, r in zip(range(max_listed), sched.waiting)],
    )


def _view(kv, req, slot: int) -> RequestView:
    return RequestView(id=req.parent_id, index=req.index, status=req.status.value, prompt_tokens=req.num_prompt_tokens,
                       output_tokens=req.num_output_tokens, max_tokens=req.max_tokens,
                       computed_tokens=req.num_computed_tokens, cached_tokens=req.num_cached_tokens,
                       blocks=len(kv.block_ids(req.request_id)), preemptions=req.num_preemptions, slot=slot)
