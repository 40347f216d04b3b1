"""paged_attention on decode batches (every q_len <= 1: the split-KV kernel and its reduce) matches the reference.

Contexts are chosen so that splits land on and off tile edges, and split counts exceed the number of
64-key tiles of the shorter contexts, so some splits are empty and must drop out of the reduce.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.batch import make_paged_batch
from kernels.planning import MAX_NUM_SPLITS
from kernels.reference import paged_attention_ref

CONTEXTS = [1, 17, 64, 100, 257]


def decode_batch(seq_lens, q_lens=None, **kw):
    kw.setdefault("num_heads", 8)
    kw.setdefault("num_kv_heads", 2)
    kw.setdefault("head_dim", 64)
    kw.setdefault("dtype", torch.float32)
    return make_paged_batch(q_lens or [1] * len(seq_lens), seq_lens, **kw)


def run(batch, **hints) -> torch.Tensor:
    out = torch.full_like(batch.query, float("nan"))
    kernels.paged_attention(*batch.args(), out=out, max_query_len=1, **hints)
    return out


@pytest.mark.parametrize("num_splits", [1, 2, 3, 8, 16])
def test_fixed_split_counts_match_reference(num_splits, device, assert_matches):
    batch = decode_batch(CONTEXTS, device=device)
    assert_matches(run(batch, num_splits=num_splits), paged_attention_ref(*batch.args()))


def test_largest_split_count_with_mostly_empty_splits(device, assert_matches):
    batch = decode_batch([100, 3], num_heads=2, num_kv_heads=1, device=device)
    assert_matches(run(batch, num_splits=MAX_NUM_SPLITS), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_automatic_split_count_matches_reference(dtype, device, assert_matches):
    batch = decode_batch([600, 5], dtype=dtype, device=device)
    assert kernels.decode_num_splits(2, 8, 2, 64, 600, dtype) > 1  # this shape does split
    out = torch.full_like(batch.query, float("nan"))
    kernels.paged_attention(*batch.args(), out=out)  # no hints: computed from the tensors
    assert_matches(out, paged_attention_ref(*batch.args()))


def test_result_does_not_depend_on_split_count(device):
    batch = decode_batch([200, 129, 3], device=device)
    one = run(batch, num_splits=1)
    for num_splits in (2, 7):
        torch.testing.assert_close(run(batch, num_splits=num_splits), one, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 4), (8, 2), (8, 1), (9, 3)])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_gqa_ratios(num_heads, num_kv_heads, num_splits, device, assert_matches):
    batch = decode_batch([70, 1, 150], num_heads=num_heads, num_kv_heads=num_kv_heads, dtype=torch.float16,
                         device=device)
    assert_matches(run(batch, num_splits=num_splits), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
def test_head_dims(head_dim, device, assert_matches):
    batch = decode_batch([90, 33], head_dim=head_dim, dtype=torch.float16, device=device)
    assert_matches(run(batch, num_splits=3), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("block_size", [16, 32, 8])
def test_block_sizes(block_size, device, assert_matches):
    batch = decode_batch([77, 16, 130], block_size=block_size, device=device)
    assert_matches(run(batch, num_splits=2), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("num_splits", [1, 4])
def test_block_table_padding_is_never_read(num_splits, device, assert_matches):
    batch = decode_batch([33, 64, 2], table_padding=2**30, extra_table_cols=4, device=device)
    assert_matches(run(batch, num_splits=num_splits), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("num_splits", [1, 3])
def test_sequences_without_a_query_token_are_skipped(num_splits, device, assert_matches):
    batch = decode_batch([40, 12, 100, 7], q_lens=[1, 0, 1, 0], device=device)
    assert batch.query.shape[0] == 2
    assert_matches(run(batch, num_splits=num_splits), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("num_splits", [1, 4])
def test_padding_slot_with_empty_context_gives_zeros(num_splits, device):
    """A CUDA-graph batch padded with seq_len 0 slots: zeros there (no NaN), real sequences unaffected."""
    batch = decode_batch([50, 1], device=device)
    batch.seq_lens[1] = 0
    batch.block_tables[1] = -1
    out = run(batch, num_splits=num_splits)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    ref = paged_attention_ref(*batch.args())
    torch.testing.assert_close(out[0], ref[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_query_rows_outside_every_sequence_are_left_untouched(num_splits, device, assert_matches):
    batch = decode_batch([40, 9], device=device)
    padded = torch.cat([batch.query, torch.randn(2, 8, 64, device=device)])
    out = torch.full_like(padded, float("nan"))
    kernels.paged_attention(padded, *batch.args()[1:], out=out, max_query_len=1, num_splits=num_splits)
    assert_matches(out[:2], paged_attention_ref(*batch.args()))
    assert out[2:].isnan().all()
