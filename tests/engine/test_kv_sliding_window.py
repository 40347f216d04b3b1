"""KVCacheManager with sliding-window groups (block_size 4, window 8): blocks that fell out of the window are
released while a request runs, hybrid (full + window) models keep one interleaved table per request, prefix hits
need only the window before the first computed token, and preemption / freeing return everything.

A query at position c reads keys c - 7 .. c, so a step starting at c needs logical blocks from (c - 7) // 4 on.
"""

from __future__ import annotations

import pytest

from engine.core.kv_cache_manager import NULL_BLOCK_ID, KVCacheManager
from engine.core.kv_groups import KVCacheGroup, first_needed_block, kv_cache_groups, layer_slots
from tests.engine.helpers_core import BLOCK_SIZE, assert_all_free, decode_one, make_request, queue_ids
from tests.engine.helpers_core import admit as admit_request

W = 8
N = NULL_BLOCK_ID


def manager(num_blocks: int = 8, windows=(W,), **kw) -> KVCacheManager:
    return KVCacheManager(num_blocks, BLOCK_SIZE, windows=windows, **kw)


def admit(kv: KVCacheManager, request_id: str, prompt: list[int]):
    return admit_request(kv, request_id, prompt, max_tokens=64)


# ---- groups -----------------------------------------------------------------------------------------------

def test_groups_of_a_uniform_window_model_are_one_group():
    assert kv_cache_groups((4096,) * 4) == (KVCacheGroup(4096, (0, 1, 2, 3)),)


def test_gemma2_alternation_gives_a_full_and_a_window_group_of_equal_size():
    windows = (4096, None) * 3
    groups = kv_cache_groups(windows)
    assert groups == (KVCacheGroup(None, (1, 3, 5)), KVCacheGroup(4096, (0, 2, 4)))
    assert layer_slots(groups, 6) == ((1, 0), (0, 0), (1, 1), (0, 1), (1, 2), (0, 2))


def test_gemma3_five_to_one_splits_window_layers_into_groups_of_the_global_count():
    windows = tuple(None if (i + 1) % 6 == 0 else 1024 for i in range(34))  # Gemma 3 4B: 5 global, 29 local
    groups = kv_cache_groups(windows)
    assert [g.window for g in groups] == [None] + [1024] * 6
    assert [len(g.layers) for g in groups] == [5, 5, 5, 5, 5, 5, 4]
    assert groups[0].layers == (5, 11, 17, 23, 29)
    assert sorted(layer for g in groups for layer in g.layers) == list(range(34))


@pytest.mark.parametrize(("position", "expected"), [(0, 0), (7, 0), (10, 0), (11, 1), (14, 1), (15, 2), (16, 2)])
def test_first_needed_block_is_the_block_of_key_position_minus_window_plus_one(position, expected):
    assert first_needed_block(position, W, BLOCK_SIZE) == expected
    assert first_needed_block(position, None, BLOCK_SIZE) == 0


# ---- release while running -----------------------------------------------------------------------------------

def test_decode_releases_each_block_once_no_query_reads_it_and_reuses_it():
    kv = manager()
    req = admit(kv, "a", list(range(10)))  # keys 0..9 in blocks 0, 1, 2
    tables, queues, used = [], [], []
    for _ in range(7):  # steps computing positions 10..16
        decode_one(kv, req)
        tables.append(list(kv.block_ids("a")))
        queues.append(queue_ids(kv.pool))
        used.append(kv.pool.num_used_blocks)
    assert tables == [
        [0, 1, 2],  # c=10 reads keys 3..10: block 0 still needed
        [N, 1, 2],  # c=11 reads 4..11: block 0 released
        [N, 1, 2, 3],  # c=12 opens block 3
        [N, 1, 2, 3],
        [N, 1, 2, 3],
        [N, N, 2, 3],  # c=15 reads 8..15
        [N, N, 2, 3, 4],  # c=16 opens block 4
    ]
    assert queues[1] == [3, 4, 5, 6, 7, 0]
    assert queues[5] == [4, 5, 6, 7, 0, 1]
    assert used == [3, 2, 3, 3, 3, 2, 3]
    kv.pool.check_invariants()


def test_a_long_generation_holds_at_most_the_window_plus_one_block():
    kv = manager(num_blocks=4)  # 16 slots, for a sequence of 200 tokens
    req = admit(kv, "a", list(range(6)))
    held = []
    for _ in range(194):
        assert decode_one(kv, req) is not None
        held.append(kv.pool.num_used_blocks)
    assert req.num_tokens == 200
    assert max(held) == 3  # keys c-7 .. c span at most 3 blocks of 4
    assert len(kv.block_ids("a")) == 50
    assert kv.block_ids("a")[:47] == [N] * 47
    kv.free(req)
    assert_all_free(kv)


def test_chunked_prefill_releases_what_the_next_chunk_no_longer_reads():
    kv = manager()
    req = make_request("a", list(range(20)))
    kv.allocate_slots(req, 12)  # positions 0..11: blocks 0, 1, 2
    req.num_computed_tokens = 12
    kv.allocate_slots(req, 8)  # positions 12..19 read from key 5 on: block 0 released, blocks 3, 4 added
    assert kv.block_ids("a") == [N, 1, 2, 3, 4]
    assert queue_ids(kv.pool) == [5, 6, 7, 0]


def test_release_happens_even_when_the_allocation_then_fails():
    kv = manager(num_blocks=3)
    req = admit(kv, "a", list(range(12)))  # blocks 0, 1, 2: the pool is full
    req.num_computed_tokens = 12
    assert kv.allocate_slots(req, 9) is None  # positions 12..20 need 3 more blocks; only block 0 came back
    assert kv.block_ids("a") == [N, 1, 2]
    assert queue_ids(kv.pool) == [0]
    kv.pool.check_invariants()


def test_num_blocks_for_counts_the_window_plus_one_chunk_in_window_groups():
    kv = manager(windows=(None, W), max_chunk_tokens=4)
    # full group: ceil(100 / 4) = 25; window group: keys c-7 .. c+3 span at most ceil(11 / 4) + 1 = 4 blocks
    assert kv.num_blocks_for(100) == 25 + 4
    assert kv.num_blocks_for(5) == 2 + 2  # a short sequence holds all its blocks in both groups
    assert manager(windows=(None,)).num_blocks_for(100) == 25


# ---- hybrid: interleaved tables ---------------------------------------------------------------------------------

def test_hybrid_table_interleaves_the_groups_and_releases_only_window_blocks():
    kv = manager(num_blocks=10, windows=(None, W))
    req = admit(kv, "a", list(range(10)))  # 3 logical blocks in each group
    assert kv.block_ids("a") == [0, 1, 2, 3, 4, 5]  # (full, window) per logical block
    decode_one(kv, req)  # c=10
    decode_one(kv, req)  # c=11: window block of logical 0 released
    assert kv.block_ids("a") == [0, N, 2, 3, 4, 5]
    assert queue_ids(kv.pool) == [6, 7, 8, 9, 1]
    decode_one(kv, req)  # c=12 opens logical block 3 in both groups
    assert kv.block_ids("a") == [0, N, 2, 3, 4, 5, 6, 7]
    kv.free(req)  # everything back, last entry first
    assert queue_ids(kv.pool) == [8, 9, 1, 7, 6, 5, 4, 3, 2, 0]
    assert_all_free(kv)


def test_hybrid_cache_keys_differ_per_group():
    kv = manager(num_blocks=10, windows=(None, W))
    admit(kv, "a", list(range(9)))
    keys = {b.block_id: h for h, b in kv.pool.cached.items()}
    assert sorted(keys) == [0, 1, 2, 3]  # two full logical blocks, in both groups
    assert keys[1] == keys[0] + (1).to_bytes(2, "little")
    assert keys[3] == keys[2] + (1).to_bytes(2, "little")


# ---- prefix hits ----------------------------------------------------------------------------------------------

def test_prefix_hit_needs_only_the_window_before_the_first_computed_token():
    kv = manager(num_blocks=10)
    a = admit(kv, "a", list(range(16)))  # blocks 0..3, all full and cached
    for _ in range(3):
        decode_one(kv, a)  # c = 16, 17, 18: blocks 0, 1 released (still cached), block 4 opened
    assert kv.block_ids("a") == [N, N, 2, 3, 4]
    b = make_request("b", list(range(16)) + [7, 7])
    hits, num_hit = kv.get_computed_blocks(b)
    # 4 blocks hit: position 16 reads keys 9..16, so blocks 2 and 3 are needed, 0 and 1 are not
    assert num_hit == 16 and [None if h is None else h.block_id for h in hits] == [None, None, 2, 3]
    kv.allocate_slots(b, 2, hits)
    assert kv.block_ids("b") == [N, N, 2, 3, 5]
    assert [kv.pool.blocks[i].ref_cnt for i in (0, 1, 2, 3)] == [0, 0, 2, 2]
    kv.pool.check_invariants()


def test_prefix_hit_survives_the_eviction_of_a_block_outside_the_window():
    kv = manager(num_blocks=8)
    a = admit(kv, "a", list(range(12)))  # blocks 0, 1, 2
    decode_one(kv, a)  # c=12: block 0 released, block 3 opened
    assert kv.block_ids("a") == [N, 1, 2, 3]
    admit(kv, "d", [50] * 20)  # takes 4, 5, 6, 7 and 0: block 0's cached content is gone
    assert kv.pool.blocks[0].block_hash is not None and kv.block_ids("d")[-1] == 0
    b = make_request("b", list(range(12)) + [5])
    hits, num_hit = kv.get_computed_blocks(b)
    # all three blocks count as hit: position 12 reads keys 5..12, in blocks 1 and 2
    assert num_hit == 12 and [None if h is None else h.block_id for h in hits] == [None, 1, 2]
    # a full-attention model would have missed everything (block 0 was reused)
    full = KVCacheManager(8, BLOCK_SIZE)
    full.pool = kv.pool
    assert full.get_computed_blocks(make_request("c", list(range(12)) + [5])) == ([], 0)


def test_prefix_hit_shrinks_to_where_the_window_blocks_are_cached():
    kv = manager(num_blocks=8)
    kv.free(admit(kv, "a", list(range(12))))  # blocks 0, 1, 2 cached; free queue [3..7, 2, 1, 0]
    admit(kv, "d", [50] * 24)  # takes 3..7 and 2: block 2 is evicted
    hits, num_hit = kv.get_computed_blocks(make_request("b", list(range(12)) + [5]))
    # 3 blocks would need blocks 1, 2; 2 blocks need blocks 0, 1 (position 8 reads keys 1..8)
    assert num_hit == 8 and [h.block_id for h in hits] == [0, 1]


def test_hybrid_prefix_hit_needs_the_whole_prefix_in_the_full_group():
    kv = manager(num_blocks=12, windows=(None, W))
    a = admit(kv, "a", list(range(12)))  # logical 0..2: (0, 1), (2, 3), (4, 5)
    decode_one(kv, a)  # c=12 releases window block 1, opens (6, 7)
    b = make_request("b", list(range(12)) + [5])
    hits, num_hit = kv.get_computed_blocks(b)
    assert num_hit == 12
    assert [None if h is None else h.block_id for h in hits] == [0, None, 2, 3, 4, 5]
    kv.allocate_slots(b, 1, hits)
    assert kv.block_ids("b") == [0, N, 2, 3, 4, 5, 8, 9]


# ---- preemption ------------------------------------------------------------------------------------------------

def test_preempted_request_frees_everything_and_its_resume_hits_the_window():
    kv = manager(num_blocks=8)
    a = admit(kv, "a", list(range(14)))  # blocks 0..3
    for _ in range(4):
        decode_one(kv, a)  # c = 14..17: blocks 0, 1 released, block 4 opened
    assert kv.block_ids("a") == [N, N, 2, 3, 4]
    kv.free(a)  # preemption: the scheduler frees and resets progress
    a.num_computed_tokens = 0
    assert queue_ids(kv.pool) == [5, 6, 7, 0, 1, 4, 3, 2]  # released blocks first, in release order
    kv.pool.check_invariants()
    hits, num_hit = kv.get_computed_blocks(a)  # 18 tokens: 4 full blocks can hit (17 // 4)
    assert num_hit == 16 and [None if h is None else h.block_id for h in hits] == [None, None, 2, 3]
    assert kv.allocate_slots(a, 2, hits) is not None
    assert kv.block_ids("a") == [N, N, 2, 3, 5]
