"""Launch planning: kernel path, tile sizes and the split-KV heuristic; no device reads when hints are given."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.planning import (MAX_NUM_SPLITS, choose_num_splits, decode_tiles, plan_paged_attention,
                              unified_tiles)


def meta_batch(num_tokens, num_seqs, num_heads=32, head_dim=128, dtype=torch.bfloat16):
    """Tensors on the meta device: shapes only, so any attempt to read a value (.item()) raises."""
    query = torch.empty(num_tokens, num_heads, head_dim, dtype=dtype, device="meta")
    cu = torch.empty(num_seqs + 1, dtype=torch.int32, device="meta")
    seq_lens = torch.empty(num_seqs, dtype=torch.int32, device="meta")
    return query, cu, seq_lens


@pytest.mark.parametrize("num_seqs,num_kv_heads,max_seq_len,expected", [
    (32, 8, 32768, 1),  # 256 programs already fill 132 SMs
    (128, 8, 512, 1),
    (1, 8, 32768, 33),  # ceil(2 * 132 / 8): two programs per SM, splits of 16 tiles
    (4, 8, 8192, 9),  # ceil(2 * 132 / 32)
    (16, 8, 8192, 3),  # 128 programs, just under one per SM
    (1, 8, 512, 2),  # 8 tiles: no split shorter than 4 tiles
    (1, 8, 100, 1),
    (1, 1, 10**6, MAX_NUM_SPLITS),
    (2, 8, 0, 1),
])
def test_choose_num_splits(num_seqs, num_kv_heads, max_seq_len, expected):
    assert choose_num_splits(num_seqs, num_kv_heads, max_seq_len, block_n=64, num_sms=132) == expected


def test_decode_with_hints_never_reads_tensor_values():
    query, cu, seq_lens = meta_batch(8, 8)
    plan = plan_paged_attention(query, 8, cu, seq_lens, max_query_len=1, max_seq_len=None, num_splits=4)
    assert (plan.kind, plan.num_splits) == ("decode", 4)
    plan = plan_paged_attention(query, 8, cu, seq_lens, max_query_len=1, max_seq_len=8192, num_splits=None)
    assert (plan.kind, plan.num_splits) == ("decode", 5)  # 64 programs -> ceil(2 * 132 / 64)


def test_mixed_batch_with_hint_never_reads_tensor_values():
    query, cu, seq_lens = meta_batch(300, 5)
    plan = plan_paged_attention(query, 8, cu, seq_lens, max_query_len=256, max_seq_len=None, num_splits=None)
    assert (plan.kind, plan.num_splits) == ("unified", 1)


def test_missing_hints_are_computed_from_the_tensors():
    query = torch.empty(3, 4, 64)
    plan = plan_paged_attention(query, 2, torch.tensor([0, 1, 2, 3], dtype=torch.int32),
                                torch.tensor([5, 9000, 7], dtype=torch.int32), None, None, None)
    assert plan.kind == "decode"
    assert plan.num_splits == choose_num_splits(3, 2, 9000, plan.tiles.block_n)
    plan = plan_paged_attention(query, 2, torch.tensor([0, 0, 3, 3], dtype=torch.int32),
                                torch.tensor([5, 9000, 7], dtype=torch.int32), None, None, None)
    assert plan.kind == "unified"


def test_empty_batch_plans_nothing():
    query, cu, seq_lens = meta_batch(0, 3)
    assert plan_paged_attention(query, 8, cu, seq_lens, None, None, None).kind == "empty"


@pytest.mark.parametrize("group", [1, 3, 4, 8, 16, 64, 128])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
def test_tiles_hold_at_least_one_token_and_sixteen_rows(group, head_dim):
    for dtype in (torch.float16, torch.float32):
        assert unified_tiles(head_dim, group, dtype).tokens_per_tile(group) >= 1
        tiles = decode_tiles(head_dim, group, dtype)
        assert tiles.block_m >= max(group, 16)


def test_head_dim_256_gets_smaller_tiles_than_128():
    big, small = unified_tiles(256, 4, torch.bfloat16), unified_tiles(128, 4, torch.bfloat16)
    assert big.block_m * big.block_n < small.block_m * small.block_n


def test_public_decode_num_splits_is_what_paged_attention_uses():
    assert kernels.decode_num_splits(4, 32, 8, 128, 8192, torch.bfloat16) == 9
    assert kernels.decode_num_splits(1, 32, 8, 128, 8192, torch.bfloat16) == 32  # 128 tiles: at least 4 per split
    assert kernels.decode_num_splits(64, 32, 8, 128, 8192, torch.bfloat16) == 1
