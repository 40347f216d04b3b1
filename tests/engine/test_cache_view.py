"""The dashboard's snapshot of the block pool (engine/cache_view.py): exact states for a small pool, bounded
work and honest estimates for a big one."""

from __future__ import annotations

import pytest

from engine.cache_view import cache_snapshot
from engine.config import EngineArgs
from engine.engine import LLMEngine
from engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def build(tiny_model_dir):
    def make(num_kv_blocks: int) -> LLMEngine:
        return LLMEngine.from_args(EngineArgs(model=tiny_model_dir("llama"), num_kv_blocks=num_kv_blocks))
    return make


def run_until_finished(engine: LLMEngine) -> None:
    while engine.has_unfinished_requests():
        engine.step()


def test_a_small_pool_is_drawn_block_by_block_with_exact_states(build):
    e = build(32)
    prefix = list(range(10, 42))  # 32 tokens: two full blocks
    # a finished 48-token request leaves three cached-free blocks behind
    e.add_request("old", list(range(100, 148)), SamplingParams(temperature=0, max_tokens=1))
    run_until_finished(e)
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    e.add_request("a", prefix + [1, 2, 3], params)
    e.add_request("b", prefix + [4, 5], params)
    e.step()
    s = cache_snapshot(e)
    assert (s.num_blocks, s.stride, len(s.cells), s.exact, s.owners_complete) == (32, 1, 32, True, True)
    # a and b share the two prefix blocks; each has one more block of its own
    assert (s.shared, s.used, s.cached_free, s.free) == (2, 4, 3, 28)
    assert s.cells.count("s") == 2 and s.cells.count("u") == 2 and s.cells.count("c") == 3
    assert [r.id for r in s.running] == ["a", "b"] and [r.blocks for r in s.running] == [3, 3]
    assert [(r.computed_tokens, r.output_tokens) for r in s.running] == [(35, 1), (34, 1)]  # prefilled, one sampled
    for bid, state in enumerate(s.cells):
        block = e.kv.pool.blocks[bid]
        assert state == ("s" if block.ref_cnt > 1 else "u" if block.ref_cnt else "c" if block.block_hash else "f")
    a_blocks = e.kv.block_ids("a")
    assert all(s.owners[b] == 0 for b in a_blocks)  # a is slot 0; the shared blocks are drawn in its colour
    assert sum(1 for o in s.owners if o == 1) == 1  # b's own block
    assert s.num_waiting == 0 and s.waiting == []


def test_waiting_requests_are_listed_with_their_progress(build):
    e = build(32)
    e.add_request("w", [5, 6, 7], SamplingParams(max_tokens=4))
    s = cache_snapshot(e)
    assert s.num_waiting == 1 and s.running == []
    (w,) = s.waiting
    assert (w.id, w.status, w.prompt_tokens, w.max_tokens, w.slot, w.cached_tokens) == ("w", "waiting", 3, 4, -1, -1)


class CountingList(list):
    def __init__(self, items):
        super().__init__(items)
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


def test_a_big_pool_is_sampled_one_cell_per_stride_and_the_work_stays_bounded(build):
    e = build(10_000)
    e.add_request("a", list(range(3, 3 + 100)), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    e.step()
    pool = e.kv.pool
    pool.blocks = CountingList(pool.blocks)
    s = cache_snapshot(e, max_cells=1000)
    assert s.stride == 10 and len(s.cells) == 1000 and not s.exact
    assert pool.blocks.reads == 1000  # one block per cell, never all 10,000
    assert s.used == 7 and s.free == 10_000 - 7  # exact: the pool counts them
    # a's 7 blocks are ids 0..6 (the free queue starts in id order): only block 0 is a sample
    assert s.cells[0] == "u" and s.owners[0] == 0 and set(s.cells[1:]) == {"f"}


def test_the_owner_walk_stops_at_its_budget(build):
    e = build(64)
    for rid in ("a", "b"):
        e.add_request(rid, list(range(3, 3 + 40)), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True,
                                                                   seed=1), cache_salt=rid)
    e.step()
    s = cache_snapshot(e, max_owner_entries=4)  # a holds 3 blocks; b's 3 would pass the budget
    assert not s.owners_complete
    assert sorted(o for o in s.owners if o >= 0) == [0, 0, 0]
