"""BlockPool: exact block ids handed out, free-queue (eviction) order, ref counts, lazy eviction of cached
blocks, and the integrity check. The free queue is listed head first: the head is handed out next."""

from __future__ import annotations

import pytest

from engine.core.block_pool import BlockPool, FreeBlockQueue, KVBlock
from tests.engine.helpers_core import queue_ids

H0, H1, H2 = b"hash-0", b"hash-1", b"hash-2"


def test_new_pool_has_every_block_free_in_id_order():
    pool = BlockPool(5)
    assert queue_ids(pool) == [0, 1, 2, 3, 4]
    assert (pool.num_free_blocks, pool.num_used_blocks, pool.usage()) == (5, 0, 0.0)
    assert [b.ref_cnt for b in pool.blocks] == [0] * 5


def test_pool_of_zero_blocks_is_rejected_naming_the_parameter():
    with pytest.raises(ValueError, match="^num_kv_blocks: must be >= 1, got 0$"):
        BlockPool(0)


def test_get_new_blocks_hands_out_the_queue_head_in_order_with_ref_count_one():
    pool = BlockPool(5)
    blocks = pool.get_new_blocks(3)
    assert [b.block_id for b in blocks] == [0, 1, 2]
    assert [b.ref_cnt for b in blocks] == [1, 1, 1]
    assert queue_ids(pool) == [3, 4]
    assert (pool.num_free_blocks, pool.num_used_blocks, pool.usage()) == (2, 3, 0.6)


def test_get_new_blocks_beyond_what_is_free_raises_and_takes_nothing():
    pool = BlockPool(3)
    pool.get_new_blocks(1)
    with pytest.raises(ValueError, match="cannot allocate 3 blocks: only 2 free"):
        pool.get_new_blocks(3)
    assert queue_ids(pool) == [1, 2]
    assert [b.ref_cnt for b in pool.blocks] == [1, 0, 0]


def test_freed_blocks_join_the_tail_in_the_order_given():
    pool = BlockPool(5)
    b0, b1, b2 = pool.get_new_blocks(3)
    pool.free_blocks([b2, b1, b0])
    assert queue_ids(pool) == [3, 4, 2, 1, 0]
    assert [b.ref_cnt for b in pool.blocks] == [0] * 5


def test_allocation_after_free_takes_the_oldest_free_blocks_first():
    pool = BlockPool(5)
    b0, b1, b2 = pool.get_new_blocks(3)
    pool.free_blocks([b2, b1, b0])
    assert [b.block_id for b in pool.get_new_blocks(3)] == [3, 4, 2]
    assert queue_ids(pool) == [1, 0]


def test_touch_pulls_a_free_cached_block_out_of_the_middle_of_the_queue():
    pool = BlockPool(5)
    b0, b1, b2 = pool.get_new_blocks(3)
    pool.cache_block(b1, H1)
    pool.free_blocks([b0, b1, b2])
    assert queue_ids(pool) == [3, 4, 0, 1, 2]
    pool.touch([pool.get_cached_block(H1)])
    assert b1.ref_cnt == 1
    assert queue_ids(pool) == [3, 4, 0, 2]
    assert (pool.num_free_blocks, pool.num_used_blocks) == (4, 1)


def test_touch_of_a_held_block_adds_a_reference_without_touching_the_queue():
    pool = BlockPool(3)
    (b0,) = pool.get_new_blocks(1)
    pool.touch([b0])
    assert b0.ref_cnt == 2
    assert queue_ids(pool) == [1, 2]


def test_shared_block_rejoins_the_queue_only_when_its_last_holder_frees_it():
    pool = BlockPool(3)
    (b0,) = pool.get_new_blocks(1)
    pool.touch([b0])
    pool.free_blocks([b0])
    assert b0.ref_cnt == 1
    assert queue_ids(pool) == [1, 2]
    pool.free_blocks([b0])
    assert b0.ref_cnt == 0
    assert queue_ids(pool) == [1, 2, 0]


def test_double_free_is_an_assertion_error():
    pool = BlockPool(2)
    (b0,) = pool.get_new_blocks(1)
    pool.free_blocks([b0])
    with pytest.raises(AssertionError, match="double free"):
        pool.free_blocks([b0])
    assert queue_ids(pool) == [1, 0]


def test_freed_cached_block_stays_hittable_until_it_is_handed_out_again():
    pool = BlockPool(2)
    (b0,) = pool.get_new_blocks(1)
    pool.cache_block(b0, H0)
    pool.free_blocks([b0])
    assert queue_ids(pool) == [1, 0]
    assert pool.get_cached_block(H0) is b0

    (b1,) = pool.get_new_blocks(1)  # the head is block 1: block 0 keeps its content
    assert b1.block_id == 1
    assert pool.get_cached_block(H0) is b0

    (again,) = pool.get_new_blocks(1)  # now block 0 is reused: its cached content is gone
    assert again is b0
    assert b0.block_hash is None
    assert pool.get_cached_block(H0) is None
    assert pool.cached == {}


def test_cache_block_of_a_hash_already_cached_keeps_the_first_block():
    pool = BlockPool(3)
    b0, b1 = pool.get_new_blocks(2)
    pool.cache_block(b0, H0)
    pool.cache_block(b1, H0)
    assert pool.get_cached_block(H0) is b0
    assert (b0.block_hash, b1.block_hash) == (H0, None)


def test_evicting_a_duplicate_copy_keeps_the_cached_original():
    pool = BlockPool(2)
    b0, b1 = pool.get_new_blocks(2)
    pool.cache_block(b0, H0)
    pool.cache_block(b1, H0)
    pool.free_blocks([b1, b0])
    assert queue_ids(pool) == [1, 0]
    pool.get_new_blocks(1)  # reuses the anonymous copy, block 1
    assert pool.get_cached_block(H0) is b0


def test_cache_block_does_not_rename_a_block_that_already_has_a_hash():
    pool = BlockPool(2)
    (b0,) = pool.get_new_blocks(1)
    pool.cache_block(b0, H0)
    pool.cache_block(b0, H1)
    assert b0.block_hash == H0
    assert pool.cached == {H0: b0}


def test_cache_block_does_nothing_when_caching_is_disabled():
    pool = BlockPool(2, enable_caching=False)
    (b0,) = pool.get_new_blocks(1)
    pool.cache_block(b0, H0)
    assert b0.block_hash is None
    assert pool.get_cached_block(H0) is None


def test_reset_prefix_cache_is_refused_while_any_block_is_in_use():
    pool = BlockPool(3)
    b0, b1 = pool.get_new_blocks(2)
    pool.cache_block(b0, H0)
    pool.free_blocks([b0])
    assert pool.reset_prefix_cache() is False
    assert pool.get_cached_block(H0) is b0
    assert b0.block_hash == H0


def test_reset_prefix_cache_forgets_every_hash_and_keeps_the_queue_order_when_nothing_is_used():
    pool = BlockPool(3)
    b0, b1, b2 = pool.get_new_blocks(3)
    pool.cache_block(b0, H0)
    pool.cache_block(b2, H2)
    pool.free_blocks([b2, b1, b0])
    assert pool.reset_prefix_cache() is True
    assert pool.cached == {}
    assert [b.block_hash for b in pool.blocks] == [None, None, None]
    assert queue_ids(pool) == [2, 1, 0]
    pool.check_invariants()


def test_check_invariants_accepts_a_pool_after_mixed_operations():
    pool = BlockPool(6)
    b0, b1, b2, b3 = pool.get_new_blocks(4)
    pool.cache_block(b0, H0)
    pool.cache_block(b1, H1)
    pool.touch([b0])
    pool.free_blocks([b3, b1, b0])
    pool.touch([b1])
    pool.get_new_blocks(2)
    pool.check_invariants()
    assert queue_ids(pool) == [3]
    assert [b.ref_cnt for b in pool.blocks] == [1, 1, 1, 0, 1, 1]


def _corrupt_queued_block_with_references(pool: BlockPool) -> None:
    pool.blocks[4].ref_cnt = 1


def _corrupt_lost_block(pool: BlockPool) -> None:
    pool.free_queue.remove(pool.blocks[4])  # ref count 0 but no longer free: a leak


def _corrupt_held_block_in_queue(pool: BlockPool) -> None:
    pool.free_queue.append(pool.blocks[0])  # ref count 1 and free: would be handed out twice


def _corrupt_hash_map(pool: BlockPool) -> None:
    pool.cached[H1] = pool.blocks[0]  # block 0 holds H0's content, not H1's


def _corrupt_negative_ref_count(pool: BlockPool) -> None:
    pool.blocks[1].ref_cnt = -1


@pytest.mark.parametrize("corrupt", [_corrupt_queued_block_with_references, _corrupt_lost_block,
                                     _corrupt_held_block_in_queue, _corrupt_hash_map, _corrupt_negative_ref_count])
def test_check_invariants_catches_a_corrupted_pool(corrupt):
    pool = BlockPool(5)
    b0, b1 = pool.get_new_blocks(2)
    pool.cache_block(b0, H0)
    pool.check_invariants()
    corrupt(pool)
    with pytest.raises(AssertionError):
        pool.check_invariants()


def test_free_queue_pop_from_empty_raises_index_error():
    queue = FreeBlockQueue([])
    with pytest.raises(IndexError, match="no free blocks"):
        queue.popleft()


def test_free_queue_remove_of_a_block_not_in_it_is_an_assertion_error():
    queue = FreeBlockQueue([KVBlock(0)])
    with pytest.raises(AssertionError, match="not in the free queue"):
        queue.remove(KVBlock(1))
    assert [b.block_id for b in queue] == [0]


def test_a_pool_of_two_million_blocks_makes_no_block_object_until_one_is_handed_out():
    pool = BlockPool(2_000_000)
    assert pool.blocks.made() == [] and len(pool.blocks) == 2_000_000
    assert (pool.num_free_blocks, pool.free_queue.num_fresh) == (2_000_000, 2_000_000)
    b0, b1, b2 = pool.get_new_blocks(3)
    assert [b.block_id for b in (b0, b1, b2)] == [0, 1, 2]
    assert len(pool.blocks.made()) == 3
    pool.free_blocks([b2, b1, b0])
    assert [b.block_id for b in pool.free_queue.linked()] == [2, 1, 0]  # after the 1,999,997 never-used ids
    assert pool.num_free_blocks == 2_000_000
    pool.check_invariants()  # costs O(blocks made), not O(num_blocks)
    assert len(pool.blocks.made()) == 3


def test_blocks_are_made_in_id_order_on_first_access_and_stay_the_same_objects():
    pool = BlockPool(4)
    third = pool.blocks[2]
    assert [b.block_id for b in pool.blocks.made()] == [0, 1, 2]
    assert pool.blocks[-2] is third and pool.blocks[1:3][1] is third
    assert [b.block_id for b in pool.get_new_blocks(3)][2] == 2 and third.ref_cnt == 1
    with pytest.raises(IndexError):
        pool.blocks[4]


def test_taking_a_never_used_block_out_of_the_queue_keeps_every_other_block_in_order():
    pool = BlockPool(6)
    b0, b1 = pool.get_new_blocks(2)
    pool.free_blocks([b1, b0])
    assert queue_ids(pool) == [2, 3, 4, 5, 1, 0]
    pool.touch([pool.blocks[4]])  # not something the manager does (hits were handed out before), but legal
    assert queue_ids(pool) == [2, 3, 5, 1, 0]
    pool.check_invariants()
    assert [b.block_id for b in pool.get_new_blocks(4)] == [2, 3, 5, 1]


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_match_a_plain_list_model_of_the_pool(seed):
    """The pool against the simplest model of its contract: the free queue as a list, refs and hashes in dicts."""
    import random

    rng = random.Random(seed)
    n = rng.choice([1, 3, 8, 40])
    pool = BlockPool(n)
    queue, refs, block_hash, cached = list(range(n)), [0] * n, [None] * n, {}
    held: list[list] = []  # each a request's blocks, as the manager keeps them
    for _ in range(300):
        op = rng.random()
        if op < 0.35 and queue:
            k = rng.randint(1, len(queue))
            got = pool.get_new_blocks(k)
            want, queue = queue[:k], queue[k:]
            for i in want:
                if block_hash[i] is not None:
                    if cached.get(block_hash[i]) == i:
                        del cached[block_hash[i]]
                    block_hash[i] = None
                refs[i] = 1
            assert [b.block_id for b in got] == want
            held.append(got)
        elif op < 0.6 and held:
            blocks = held.pop(rng.randrange(len(held)))
            pool.free_blocks(reversed(blocks))
            for b in reversed(blocks):
                refs[b.block_id] -= 1
                if refs[b.block_id] == 0:
                    queue.append(b.block_id)
        elif op < 0.8 and held:
            b = rng.choice(rng.choice(held))
            h = b"h%d" % rng.randrange(6)
            pool.cache_block(b, h)
            if block_hash[b.block_id] is None and h not in cached:
                block_hash[b.block_id], cached[h] = h, b.block_id
        elif cached:
            h = rng.choice(sorted(cached))
            block = pool.get_cached_block(h)
            assert block.block_id == cached[h]
            pool.touch([block])
            if refs[block.block_id] == 0:
                queue.remove(block.block_id)
            refs[block.block_id] += 1
            held.append([block])
        assert queue_ids(pool) == queue
        assert [b.ref_cnt for b in pool.blocks] == refs
        assert {h: b.block_id for h, b in pool.cached.items()} == cached
        pool.check_invariants()
