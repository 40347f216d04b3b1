"""The worker's host-side batch and KV sizing: every key a kernel reads has a block-table column, and the
cache never gets more blocks than the scheduler could fill."""

from __future__ import annotations


import pytest
import torch

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine.step import CachedSeq, NewSeq, SamplingOptions, SchedulerOutput
from engine.worker.host_batch import HostBatch, HostBatchBuilder, profile_batch
from engine.worker.kv_sizing import decide_num_blocks, max_useful_blocks
from engine.worker.seq_states import SeqStates


def assert_tables_cover_every_key(hb: HostBatch, block_size: int, num_blocks: int) -> None:
    needed = -(-hb.seq_lens // block_size)
    assert hb.block_tables.shape[1] >= needed.max(), "a key position has no block-table column"
    assert hb.block_tables.min() >= 0 and hb.block_tables.max() < num_blocks
    assert hb.slot_mapping.min() >= 0 and hb.slot_mapping.max() < num_blocks * block_size


@pytest.mark.parametrize("num_tokens,block_size", [(2048, 16), (8192, 16), (1000, 32), (5, 16), (1, 1)])
def test_the_profile_batch_reads_and_writes_only_its_one_block_cache(num_tokens, block_size):
    hb = profile_batch(num_tokens, 131072, block_size, max_num_seqs=256)
    assert hb.seq_lens.tolist() == [num_tokens] and hb.query_lens.tolist() == [num_tokens]
    assert_tables_cover_every_key(hb, block_size, num_blocks=1)
    assert len(hb.logits_indices) == min(num_tokens, 256) and hb.logits_indices[-1] == num_tokens - 1


def test_the_profile_batch_fills_the_whole_token_budget_when_the_context_is_shorter():
    hb = profile_batch(8192, 768, 16, max_num_seqs=256)
    assert hb.seq_lens.tolist() == [768] * 10 + [512] and len(hb.input_ids) == 8192
    assert hb.positions.tolist()[766:770] == [766, 767, 0, 1]
    assert_tables_cover_every_key(hb, 16, num_blocks=1)
    assert len(hb.logits_indices) == 256


def test_the_profile_batch_never_has_more_sequences_than_max_num_seqs():
    hb = profile_batch(8192, 100, 16, max_num_seqs=4)
    assert hb.seq_lens.tolist() == [100] * 4


def test_the_profile_batch_gives_every_kv_cache_group_the_one_block_table():
    hb = profile_batch(40, 20, 16, max_num_seqs=8, num_kv_groups=3)  # e.g. Gemma 3: global + window groups
    assert len(hb.more_groups) == 2
    for tables, slots in hb.more_groups:
        assert tables.tolist() == hb.block_tables.tolist() and slots.tolist() == hb.slot_mapping.tolist()
    assert profile_batch(40, 20, 16, max_num_seqs=8).more_groups == ()


def test_the_profile_batch_runs_through_the_torch_backend_on_a_one_block_cache():
    from engine.attention import build_attention_metadata, get_attention_backend

    bs, kvh, d, n = 4, 2, 8, 37
    hb = profile_batch(n, 20, bs, max_num_seqs=8)
    backend = get_attention_backend("torch")
    plan = backend.plan(hb.query_lens, hb.seq_lens, hb.block_tables, bs, torch.device("cpu"), torch.float32)
    meta = build_attention_metadata(hb.query_lens, hb.seq_lens, hb.block_tables, hb.slot_mapping,
                                    torch.device("cpu"), plan)
    k_cache, v_cache = torch.zeros(1, bs, kvh, d), torch.zeros(1, bs, kvh, d)
    q, k, v = torch.randn(n, 4, d), torch.randn(n, kvh, d), torch.randn(n, kvh, d)
    backend.store_kv(k, v, k_cache, v_cache, meta)
    assert torch.isfinite(backend.attention(q, k, v, k_cache, v_cache, meta, d ** -0.5)).all()


def test_a_step_batch_is_built_from_the_workers_own_copy_of_each_sequence():
    opts = SamplingOptions()
    states = SeqStates()
    first = SchedulerOutput((NewSeq("a", (5, 6, 7, 8, 9), 5, (3, 1), 0, 5, True, opts),
                             NewSeq("b", (1, 2, 3), 3, (0,), 0, 2, False, opts)), (), (), 7, 7, 0, 0)
    builder = HostBatchBuilder(block_size=4)
    hb = builder.build(first.seqs, states.update(first))
    assert hb.input_ids.tolist() == [5, 6, 7, 8, 9, 1, 2]
    assert hb.positions.tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert hb.slot_mapping.tolist() == [12, 13, 14, 15, 4, 0, 1]
    assert hb.sample_idx.tolist() == [0] and hb.logits_indices.tolist() == [4]
    second = SchedulerOutput((CachedSeq("a", (42,), (), 5, 1, True), CachedSeq("b", (), (2,), 2, 1, True)),
                             (), (), 2, 1, 0, 0)
    hb = builder.build(second.seqs, states.update(second))
    assert hb.input_ids.tolist() == [42, 3]
    assert hb.block_tables.tolist() == [[3, 1], [0, 2]]
    assert states["a"].token_ids == [5, 6, 7, 8, 9, 42] and states["a"].num_output_tokens == 1
    states.update(SchedulerOutput((), ("a",), (), 0, 0, 0, 0))
    assert list(states.states) == ["b"]


def sizing_config(device: str, *, num_kv_blocks=None, max_num_seqs=4, max_model_len=100, block_size=16,
                  cpu_bytes=2**30) -> EngineConfig:
    model = ModelConfig(name="t", path=None, tokenizer=None, load_format="dummy", dtype=torch.float32, hf_config=None,
                        architecture="llama", vocab_size=10, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                        head_dim=8, max_model_len=max_model_len, eos_token_ids=())
    return EngineConfig(model=model, cache=CacheConfig(block_size, num_kv_blocks, True, 0.9, cpu_bytes),
                        scheduler=SchedulerConfig(max_num_seqs, 2048, max_model_len), device=torch.device(device),
                        seed=0, attention_backend="torch", enforce_eager=True)


def test_a_huge_gpu_is_capped_at_what_every_sequence_at_full_length_could_use():
    config = sizing_config("cuda")
    most = max_useful_blocks(4, 100, 16)
    assert most == 4 * 7
    assert decide_num_blocks(config, block_bytes=1024, profile=lambda: 33_000_000) == most


def test_a_small_gpu_gets_what_the_profile_says_fits():
    assert decide_num_blocks(sizing_config("cuda"), block_bytes=1024, profile=lambda: 5) == 5


def test_the_cpu_budget_is_capped_too_and_an_explicit_block_count_wins():
    assert decide_num_blocks(sizing_config("cpu", cpu_bytes=10 * 1024), 1024, None) == 10
    assert decide_num_blocks(sizing_config("cpu"), 1024, None) == 28
    explicit = sizing_config("cuda", num_kv_blocks=123_456)
    assert decide_num_blocks(explicit, 1024, profile=lambda: pytest.fail("no profile when the count is given")) == 123_456
