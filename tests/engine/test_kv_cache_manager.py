"""KVCacheManager with block_size 4: how many blocks a step needs, which ids it gets, prefix-cache hits
(exact block ids, the hit cap, salts, chained hashes), all-or-nothing allocation, and freeing order."""

from __future__ import annotations

import pytest

from engine.core.kv_cache_manager import KVCacheManager, hash_block
from tests.engine.helpers_core import (BLOCK_SIZE, admit, assert_all_free, chained_hashes, decode_one,
                                      make_request, queue_ids)

P8 = list(range(10, 18))  # two full blocks
P12 = list(range(10, 22))  # three full blocks


def manager(num_blocks: int = 8, enable_caching: bool = True) -> KVCacheManager:
    return KVCacheManager(num_blocks, BLOCK_SIZE, enable_caching)


# ---- allocation counts ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("num_tokens", "num_blocks"), [(1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3)])
def test_allocation_rounds_tokens_up_to_whole_blocks(num_tokens, num_blocks):
    kv = manager()
    req = make_request("a", list(range(num_tokens)))
    new = kv.allocate_slots(req, num_tokens)
    assert [b.block_id for b in new] == list(range(num_blocks))
    assert kv.block_ids("a") == list(range(num_blocks))
    assert kv.pool.num_free_blocks == 8 - num_blocks


def test_decode_allocates_a_new_block_exactly_when_the_last_one_is_full():
    kv = manager()
    req = admit(kv, "a", [1, 2, 3])
    assert kv.block_ids("a") == [0]
    new_per_token = [[b.block_id for b in decode_one(kv, req)] for _ in range(6)]
    # tokens 4..9: the 4th fits block 0; the 5th opens block 1; the 9th opens block 2
    assert new_per_token == [[], [1], [], [], [], [2]]
    assert kv.block_ids("a") == [0, 1, 2]
    assert req.num_tokens == 9


def test_chunked_prefill_allocates_only_for_the_scheduled_chunk():
    kv = manager()
    req = make_request("a", P12)
    assert [b.block_id for b in kv.allocate_slots(req, 6)] == [0, 1]
    req.num_computed_tokens = 6
    assert [b.block_id for b in kv.allocate_slots(req, 6)] == [2]
    assert kv.block_ids("a") == [0, 1, 2]


def test_full_blocks_are_cached_when_scheduled_and_a_partial_block_is_not():
    kv = manager()
    req = make_request("a", P12)
    b0, b1 = kv.allocate_slots(req, 6)
    hashes = chained_hashes(P12, BLOCK_SIZE)
    assert (b0.block_hash, b1.block_hash) == (hashes[0], None)
    req.num_computed_tokens = 6
    (b2,) = kv.allocate_slots(req, 6)
    assert (b1.block_hash, b2.block_hash) == (hashes[1], hashes[2])
    assert kv.pool.cached == {hashes[0]: b0, hashes[1]: b1, hashes[2]: b2}


def test_decode_caches_a_block_once_the_token_filling_it_is_scheduled():
    kv = manager()
    req = admit(kv, "a", [1, 2, 3])
    (b0,) = kv.req_to_blocks["a"]
    assert b0.block_hash is None
    decode_one(kv, req, token=4)  # 4 tokens scheduled: block 0 is full
    assert b0.block_hash == hash_block(None, [1, 2, 3, 4])


# ---- all-or-nothing allocation ------------------------------------------------------------------------

def test_allocate_slots_returns_none_and_changes_nothing_when_blocks_are_too_few():
    kv = manager(num_blocks=3)
    admit(kv, "a", P8)
    late = make_request("b", [50, 51, 52, 53, 54])
    assert kv.allocate_slots(late, 5) is None
    assert queue_ids(kv.pool) == [2]
    assert kv.block_ids("b") == []
    assert "b" not in kv.req_to_blocks
    assert [b.ref_cnt for b in kv.pool.blocks] == [1, 1, 0]


def test_growth_of_a_running_request_that_does_not_fit_returns_none_and_keeps_its_blocks():
    kv = manager(num_blocks=2)
    req = admit(kv, "a", P8)
    assert decode_one(kv, req) is None
    assert kv.block_ids("a") == [0, 1]
    assert queue_ids(kv.pool) == []
    assert [b.ref_cnt for b in kv.pool.blocks] == [1, 1]


def test_hit_blocks_in_the_free_queue_count_as_consumed_when_checking_the_fit():
    kv = manager(num_blocks=3)
    first = admit(kv, "a", P8 + [1])  # blocks 0, 1 cached, block 2 partial
    kv.free(first)
    assert queue_ids(kv.pool) == [2, 1, 0]

    # 8 shared tokens + 5 more = 4 blocks: 2 hits (both in the free queue) + 2 new, but only 1 other is free
    second = make_request("b", P8 + [60, 61, 62, 63, 64])
    hits, num_hit = kv.get_computed_blocks(second)
    assert ([b.block_id for b in hits], num_hit) == ([0, 1], 8)
    assert kv.allocate_slots(second, 5, hits) is None
    assert queue_ids(kv.pool) == [2, 1, 0]
    assert [b.ref_cnt for b in kv.pool.blocks] == [0, 0, 0]
    assert kv.get_computed_blocks(second) == (hits, 8)  # still cached
    kv.pool.check_invariants()


def test_hit_blocks_in_the_free_queue_plus_one_new_block_fit_exactly():
    kv = manager(num_blocks=3)
    kv.free(admit(kv, "a", P8 + [1]))
    second = make_request("b", P8 + [60, 61])
    hits, _ = kv.get_computed_blocks(second)
    new = kv.allocate_slots(second, 2, hits)
    assert [b.block_id for b in new] == [2]
    assert kv.block_ids("b") == [0, 1, 2]
    assert queue_ids(kv.pool) == []


# ---- prefix-cache hits ------------------------------------------------------------------------------------

def test_second_request_with_the_same_leading_blocks_gets_those_block_ids():
    kv = manager()
    admit(kv, "a", P8 + [1, 2])  # blocks 0, 1 full, block 2 partial
    second = make_request("b", P8 + [7, 7, 7])
    hits, num_hit = kv.get_computed_blocks(second)
    assert ([b.block_id for b in hits], num_hit) == ([0, 1], 8)
    new = kv.allocate_slots(second, 3, hits)
    assert [b.block_id for b in new] == [3]
    assert kv.block_ids("b") == [0, 1, 3]
    assert [b.ref_cnt for b in kv.pool.blocks[:4]] == [2, 2, 1, 1]


def test_freed_blocks_are_hit_from_the_free_queue_and_leave_it():
    kv = manager(num_blocks=5)
    kv.free(admit(kv, "a", P8 + [1, 2]))
    assert queue_ids(kv.pool) == [3, 4, 2, 1, 0]
    second = admit(kv, "b", P8 + [7, 7, 7])
    assert kv.block_ids("b") == [0, 1, 3]
    assert second.num_computed_tokens == 8
    assert queue_ids(kv.pool) == [4, 2]


@pytest.mark.parametrize(("prompt", "hit_ids", "num_hit"), [
    (P8, [0], 4),  # exactly 2 full blocks: the last token must be computed, so only block 0 is hit
    (P8 + [99], [0, 1], 8),  # one more token: both blocks hit
    (P8[:4], [], 0),  # exactly one block: nothing is hit
    (P8[:3], [], 0),  # no full block at all
])
def test_hit_is_capped_so_at_least_one_token_is_computed(prompt, hit_ids, num_hit):
    kv = manager()
    admit(kv, "a", P12)
    hits, n = kv.get_computed_blocks(make_request("b", prompt))
    assert ([b.block_id for b in hits], n) == (hit_ids, num_hit)


def test_identical_prompt_of_two_full_blocks_computes_its_last_block_in_a_new_block():
    kv = manager()
    admit(kv, "a", P8)
    second = admit(kv, "b", P8)
    assert second.num_computed_tokens == 4
    assert kv.block_ids("b") == [0, 2]
    assert [b.ref_cnt for b in kv.pool.blocks[:3]] == [2, 1, 1]
    assert kv.pool.blocks[2].block_hash is None  # an equal copy of block 1 stays anonymous


def test_same_salt_hits_and_a_different_salt_misses():
    kv = manager()
    admit(kv, "a", P8 + [1], cache_salt="tenant-1")
    same = make_request("b", P8 + [1], cache_salt="tenant-1")
    other = make_request("c", P8 + [1], cache_salt="tenant-2")
    unsalted = make_request("d", P8 + [1])
    assert kv.get_computed_blocks(same)[1] == 8
    assert kv.get_computed_blocks(other) == ([], 0)
    assert kv.get_computed_blocks(unsalted) == ([], 0)


def test_a_different_token_in_block_0_misses_every_later_block():
    kv = manager()
    admit(kv, "a", P12 + [1])
    changed = [0] + P12[1:] + [1]  # blocks 1 and 2 hold the same tokens as the first request's
    assert kv.get_computed_blocks(make_request("b", changed)) == ([], 0)


def test_a_different_token_in_block_1_hits_only_block_0():
    kv = manager()
    admit(kv, "a", P12 + [1])
    changed = P12[:5] + [0] + P12[6:] + [1]
    hits, num_hit = kv.get_computed_blocks(make_request("b", changed))
    assert ([b.block_id for b in hits], num_hit) == ([0], 4)


def test_caching_disabled_never_hits_and_caches_nothing():
    kv = manager(enable_caching=False)
    admit(kv, "a", P8 + [1])
    assert kv.get_computed_blocks(make_request("b", P8 + [1])) == ([], 0)
    assert kv.pool.cached == {}
    assert [b.block_hash for b in kv.pool.blocks] == [None] * 8


def test_hit_after_the_block_was_reused_misses():
    kv = manager(num_blocks=3)
    kv.free(admit(kv, "a", P8 + [1]))
    assert queue_ids(kv.pool) == [2, 1, 0]
    admit(kv, "b", [70, 71, 72, 73, 74])  # takes blocks 2 and 1: block 1's content is gone
    hits, num_hit = kv.get_computed_blocks(make_request("c", P8 + [1]))
    assert ([b.block_id for b in hits], num_hit) == ([0], 4)


# ---- hashing ----------------------------------------------------------------------------------------------

def test_hash_block_chains_through_the_parent_and_salts_only_the_root():
    root = hash_block(None, [1, 2, 3, 4])
    assert root == hash_block(None, [1, 2, 3, 4])
    assert len(root) == 16
    assert root != hash_block(None, [1, 2, 3, 5])
    assert root != hash_block(None, [1, 2, 3, 4], salt="s")
    assert hash_block(root, [5, 6, 7, 8]) != hash_block(hash_block(None, [0, 2, 3, 4]), [5, 6, 7, 8])
    # a salt reaches later blocks through the parent, so the salt argument is not needed past the root
    assert hash_block(root, [5, 6, 7, 8], salt="s") == hash_block(root, [5, 6, 7, 8])


def test_request_block_hashes_match_the_chained_hashes_of_its_full_blocks():
    kv = manager()
    req = admit(kv, "a", P8 + [1], cache_salt="x")
    assert req.block_hashes == chained_hashes(P8 + [1], BLOCK_SIZE, "x")
    assert len(req.block_hashes) == 2


# ---- freeing ------------------------------------------------------------------------------------------

def test_free_returns_every_block_and_zeroes_every_ref_count():
    kv = manager()
    a = admit(kv, "a", P8 + [1])
    b = admit(kv, "b", P8 + [2, 3])
    assert kv.block_ids("b") == [0, 1, 3]
    kv.free(a)
    kv.free(b)
    assert_all_free(kv)


def test_free_releases_blocks_last_first_so_the_tail_is_evicted_first():
    kv = manager(num_blocks=5)
    kv.free(admit(kv, "a", P8 + [1]))
    assert queue_ids(kv.pool) == [3, 4, 2, 1, 0]
    assert [b.block_id for b in kv.pool.get_new_blocks(3)] == [3, 4, 2]


def test_shared_blocks_return_to_the_queue_only_after_every_holder_is_freed():
    kv = manager(num_blocks=5)
    a = admit(kv, "a", P8 + [1])
    b = admit(kv, "b", P8 + [2])
    assert kv.block_ids("b") == [0, 1, 3]
    kv.free(a)
    assert queue_ids(kv.pool) == [4, 2]
    assert [b.ref_cnt for b in kv.pool.blocks] == [1, 1, 0, 1, 0]
    kv.free(b)
    assert queue_ids(kv.pool) == [4, 2, 3, 1, 0]


def test_free_of_a_request_without_blocks_does_nothing():
    kv = manager(num_blocks=2)
    kv.free(make_request("never", [1, 2]))
    assert queue_ids(kv.pool) == [0, 1]
