"""Which slice of the model each tensor-parallel rank holds: whole GQA groups per rank, KV heads replicated
when there are fewer than ranks, padded vocabulary chunks, and a clear error for shapes that cannot split."""

from __future__ import annotations

import pytest

from engine.config import EngineArgs
from engine.distributed.partition import plan_shards


def covers(ranges: list[tuple[int, int]], n: int) -> bool:
    """The ranges tile [0, n) in order, without gaps or overlaps."""
    return ranges[0][0] == 0 and ranges[-1][1] == n and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_an_even_split_gives_every_rank_its_own_kv_heads_and_the_query_heads_that_read_them():
    shards = plan_shards(num_heads=8, num_kv_heads=4, intermediate_size=128, vocab_size=512, world=2)
    assert [s.kv_heads for s in shards] == [(0, 2), (2, 4)]
    assert [s.q_heads for s in shards] == [(0, 4), (4, 8)]
    assert [s.intermediate for s in shards] == [(0, 64), (64, 128)]
    assert [s.vocab for s in shards] == [(0, 256), (256, 512)]


def test_smollm2_at_two_ranks_splits_whole_groups_unevenly():
    # SmolLM2-135M: 9 query heads in 3 groups of 3. Rank 0 (which also schedules and samples) gets the smaller share.
    s0, s1 = plan_shards(num_heads=9, num_kv_heads=3, intermediate_size=1536, vocab_size=49152, world=2)
    assert (s0.kv_heads, s0.q_heads) == ((0, 1), (0, 3))
    assert (s1.kv_heads, s1.q_heads) == ((1, 3), (3, 9))
    assert s0.intermediate_size == s1.intermediate_size == 768


def test_fewer_kv_heads_than_ranks_replicates_each_kv_head():
    shards = plan_shards(num_heads=4, num_kv_heads=2, intermediate_size=64, vocab_size=100, world=4)
    assert [s.kv_heads for s in shards] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [s.q_heads for s in shards] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    mqa = plan_shards(num_heads=6, num_kv_heads=1, intermediate_size=64, vocab_size=100, world=3)
    assert [s.kv_heads for s in mqa] == [(0, 1)] * 3
    assert [s.q_heads for s in mqa] == [(0, 2), (2, 4), (4, 6)]


@pytest.mark.parametrize("heads,kv_heads,world", [(8, 4, 1), (8, 4, 2), (8, 4, 4), (8, 4, 8), (9, 3, 2),
                                                  (9, 3, 3), (6, 1, 3), (6, 3, 2), (12, 2, 4), (10, 5, 3)])
def test_every_query_head_is_on_exactly_one_rank_next_to_its_kv_head(heads, kv_heads, world):
    shards = plan_shards(heads, kv_heads, intermediate_size=100, vocab_size=1000, world=world)
    assert covers([s.q_heads for s in shards], heads)
    assert covers([s.intermediate for s in shards], 100)
    group = heads // kv_heads
    for s in shards:
        assert s.num_heads >= 1 and s.num_kv_heads >= 1
        # the KV heads a rank's query heads read are exactly the ones it holds
        assert {h // group for h in range(*s.q_heads)} == set(range(*s.kv_heads))


def test_the_vocabulary_splits_into_equal_chunks_with_the_last_one_padded():
    shards = plan_shards(num_heads=6, num_kv_heads=3, intermediate_size=96, vocab_size=512, world=3)
    assert [s.vocab for s in shards] == [(0, 171), (171, 342), (342, 513)]
    assert {s.vocab_rows for s in shards} == {171}
    assert shards[2].real_vocab == (342, 512)


@pytest.mark.parametrize("heads,kv_heads,inter,world,needle", [
    (4, 2, 64, 3, "3 ranks cannot share the model's 2 KV heads"),
    (2, 1, 64, 4, "more than the model's 2 query heads"),
    (8, 8, 2, 4, "more than the MLP's 2 columns"),
    (4, 2, 64, 0, "must be >= 1"),
])
def test_shapes_that_cannot_split_name_tensor_parallel_size(heads, kv_heads, inter, world, needle):
    with pytest.raises(ValueError, match="tensor_parallel_size") as err:
        plan_shards(heads, kv_heads, inter, vocab_size=100, world=world)
    assert needle in str(err.value)


def test_engine_args_refuse_an_unsplittable_size_before_starting_any_process(tmp_path):
    from engine.models.tiny import save_tiny_llama

    path = save_tiny_llama(tmp_path / "tiny", vocab_size=512, tokenizer=False)  # 4 heads, 2 KV heads
    with pytest.raises(ValueError, match="tensor_parallel_size: 3 ranks cannot share"):
        EngineArgs(model=str(path), device="cpu", tensor_parallel_size=3).resolve()
    with pytest.raises(ValueError, match="tensor_parallel_size: must be an integer >= 1"):
        EngineArgs(tensor_parallel_size=0)


def test_tensor_parallel_ranks_share_the_cores_unless_told_otherwise(tmp_path):
    import os

    from engine.models.tiny import save_tiny_llama

    path = save_tiny_llama(tmp_path / "tiny", vocab_size=512, tokenizer=False)
    cores = len(os.sched_getaffinity(0))
    assert EngineArgs(model=str(path), device="cpu", tensor_parallel_size=2).resolve().cpu_threads == max(1, cores // 2)
    assert EngineArgs(model=str(path), device="cpu", tensor_parallel_size=2, cpu_threads=3).resolve().cpu_threads == 3
    assert EngineArgs(model=str(path), device="cpu").resolve().cpu_threads is None


def test_asynchronous_scheduling_is_off_under_tensor_parallelism_and_refused_if_asked_for(tmp_path):
    # ranks > 0 never hold rank 0's sampled tokens, so they could not take a pending decode input on the device
    from engine.models.tiny import save_tiny_llama

    path = save_tiny_llama(tmp_path / "tiny", vocab_size=512, tokenizer=False)
    assert EngineArgs(model=str(path), device="cpu", tensor_parallel_size=2).resolve().async_scheduling is False
    with pytest.raises(ValueError, match="async_scheduling: not supported with tensor_parallel_size > 1"):
        EngineArgs(model=str(path), device="cpu", tensor_parallel_size=2, async_scheduling=True).resolve()
    assert EngineArgs(model=str(path), device="cpu", async_scheduling=True).resolve().async_scheduling is True
@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "gemma2", "gemma3", "phi3"])
def test_families_without_sharded_modules_are_refused_by_name_at_more_than_one_rank(arch, tmp_path):
    from engine.models.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / arch, arch)
    with pytest.raises(ValueError, match="tensor_parallel_size: 2 ranks is not supported for") as err:
        EngineArgs(model=str(path), device="cpu", tensor_parallel_size=2).resolve()
    assert "llama, mistral, qwen2, qwen3" in str(err.value)
    assert EngineArgs(model=str(path), device="cpu").resolve().parallel.tensor_parallel_size == 1
