"""paged_attention on batches with multi-token queries (the varlen kernel) matches the reference.

Every batch comes from kernels.batch: shuffled page ids, NaN in every cache slot no sequence owns and in the
block a table's padding points at, and `out` filled with NaN first, so a stray read or a missed write fails.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels.batch import make_paged_batch
from kernels.planning import AttentionTiles
from kernels.reference import paged_attention_ref
from kernels.unified_attention import unified_attention

# (q_len, seq_len) per sequence: decode, whole prefill, chunked prefill / prefix hit, empty query, single token.
MIXED = [(1, 45), (37, 37), (13, 80), (0, 20), (1, 1), (5, 21)]


def run(batch, **hints) -> torch.Tensor:
    out = torch.full_like(batch.query, float("nan"))
    returned = kernels.paged_attention(*batch.args(), out=out, **hints)
    assert returned is out
    return out


def batch_of(lens, **kw):
    q_lens, seq_lens = zip(*lens)
    kw.setdefault("num_heads", 8)
    kw.setdefault("num_kv_heads", 2)
    kw.setdefault("head_dim", 64)
    return make_paged_batch(list(q_lens), list(seq_lens), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mixed_batch_of_decode_prefill_chunk_and_prefix_hit(dtype, device, assert_matches):
    batch = batch_of(MIXED, dtype=dtype, device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 4), (8, 2), (8, 1), (9, 3)])
def test_gqa_ratios(num_heads, num_kv_heads, device, assert_matches):
    batch = batch_of([(29, 29), (3, 50)], num_heads=num_heads, num_kv_heads=num_kv_heads, dtype=torch.float16,
                     device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
def test_head_dims(head_dim, device, assert_matches):
    batch = batch_of([(19, 40), (1, 7)], head_dim=head_dim, dtype=torch.float16, device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("block_size", [16, 32, 48, 8, 1])
def test_block_sizes(block_size, device, assert_matches):
    batch = batch_of([(23, 61), (9, 9)], block_size=block_size, dtype=torch.float32, device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("padding", [-1, 2**30])
def test_block_table_padding_is_never_read(padding, device, assert_matches):
    """Entries past ceil(seq_len / block_size) may hold any value, even ones no pointer could survive."""
    batch = batch_of([(16, 32), (7, 39)], table_padding=padding, extra_table_cols=5, dtype=torch.float32,
                     device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


def test_long_prefix_hit_with_short_query(device, assert_matches):
    batch = batch_of([(6, 300), (40, 333)], dtype=torch.float16, device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


def test_sequences_without_query_tokens_are_skipped(device, assert_matches):
    batch = batch_of([(0, 16), (20, 20), (0, 1), (0, 64), (2, 3)], dtype=torch.float32, device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


def test_batch_with_no_query_tokens_returns_out_untouched(device):
    batch = batch_of([(0, 16), (0, 5)], dtype=torch.float32, device=device)
    out = kernels.paged_attention(*batch.args())
    assert out.shape == (0, 8, 64)


def test_hints_give_the_same_result_as_computed_metadata(device):
    batch = batch_of(MIXED, dtype=torch.float32, device=device)
    hinted = run(batch, max_query_len=batch.max_query_len, max_seq_len=batch.max_seq_len)
    assert torch.equal(hinted, run(batch))


def test_out_is_allocated_in_query_dtype_when_not_given(device, assert_matches):
    batch = batch_of([(4, 9)], dtype=torch.float16, device=device)
    out = kernels.paged_attention(*batch.args())
    assert out.dtype == torch.float16 and out.shape == batch.query.shape
    assert_matches(out, paged_attention_ref(*batch.args()))


def test_query_and_out_may_be_strided_views(device, assert_matches):
    """The engine slices q out of a fused qkv projection and may write into a wider buffer."""
    batch = batch_of([(11, 30), (1, 17)], dtype=torch.float32, device=device)
    qkv = torch.randn(batch.query.shape[0], 12, 64, device=device)
    qkv[:, :8] = batch.query
    query = qkv[:, :8]
    wide_out = torch.full((batch.query.shape[0], 10, 64), float("nan"), device=device)
    out = wide_out[:, 1:9]
    kernels.paged_attention(query, *batch.args()[1:], out=out)
    assert_matches(out, paged_attention_ref(*batch.args()))
    assert wide_out[:, 0].isnan().all() and wide_out[:, 9].isnan().all()


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (9, 3), (8, 1)])
def test_small_tiles_cross_many_query_and_kv_tiles(num_heads, num_kv_heads, device, assert_matches):
    """16-row, 16-key tiles split each sequence into many query tiles (of 16 // group tokens) and KV tiles,
    exercising the tile -> sequence search and the unmasked/masked loop boundary at every offset."""
    batch = batch_of(MIXED, num_heads=num_heads, num_kv_heads=num_kv_heads, dtype=torch.float32, device=device)
    out = torch.full_like(batch.query, float("nan"))
    unified_attention(*batch.args()[:6], batch.scale, out, AttentionTiles(16, 16, 4, 1))
    assert_matches(out, paged_attention_ref(*batch.args()))


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lens=st.lists(st.tuples(st.integers(1, 70), st.floats(0, 1)), min_size=1, max_size=4),
    heads=st.sampled_from([(2, 2), (4, 2), (6, 2), (8, 1)]),
    block_size=st.sampled_from([16, 32, 8]),
    tiles=st.sampled_from([AttentionTiles(16, 16, 4, 1), AttentionTiles(32, 32, 4, 1), AttentionTiles(64, 16, 4, 1)]),
    seed=st.integers(0, 2**16),
)
def test_random_batches_match_reference(lens, heads, block_size, tiles, seed, device, assert_matches):
    seq_lens = [n for n, _ in lens]
    q_lens = [round(frac * n) for n, frac in lens]
    if sum(q_lens) == 0:
        q_lens[0] = 1
    batch = make_paged_batch(q_lens, seq_lens, num_heads=heads[0], num_kv_heads=heads[1], head_dim=32,
                             block_size=block_size, dtype=torch.float32, device=device, seed=seed)
    out = torch.full_like(batch.query, float("nan"))
    unified_attention(*batch.args()[:6], batch.scale, out, tiles)
    assert_matches(out, paged_attention_ref(*batch.args()))


def test_batch_of_more_sequences_than_one_search_chunk(device, assert_matches):
    """Over SEQ_CHUNK (128) sequences: the tile -> sequence count spans several vector loads."""
    lens = [(1, 3 + s % 40) for s in range(125)] + [(2, 9)] + [(0, 5)] * 3 + [(20, 20)]
    batch = batch_of(lens, num_heads=2, num_kv_heads=1, head_dim=16, dtype=torch.float16, device=device)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


def test_query_rows_outside_every_sequence_are_left_untouched(device, assert_matches):
    """Padding tokens after cu_seqlens_q[-1] (e.g. a batch padded to a fixed T) are neither read nor written."""
    batch = batch_of([(5, 12), (1, 30)], dtype=torch.float16, device=device)
    padded = torch.cat([batch.query, torch.randn(3, 8, 64, device=device).half()])
    out = torch.full_like(padded, float("nan"))
    kernels.paged_attention(padded, *batch.args()[1:], out=out)
    assert_matches(out[:6], paged_attention_ref(*batch.args()))
    assert out[6:].isnan().all()
