"""Checks that need a real GPU: bf16, long contexts, head_dim 256, large block sizes, caches past 2^31
elements, and CUDA-graph capture and replay of the decode path. Skipped where there is no CUDA device.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.batch import make_paged_batch
from kernels.reference import paged_attention_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def batch_of(lens, **kw):
    kw.setdefault("num_heads", 32)
    kw.setdefault("num_kv_heads", 8)
    kw.setdefault("head_dim", 128)
    kw.setdefault("dtype", torch.bfloat16)
    q_lens, seq_lens = zip(*lens)
    return make_paged_batch(list(q_lens), list(seq_lens), device="cuda", **kw)


def run(batch, **hints) -> torch.Tensor:
    out = torch.full_like(batch.query, float("nan"))
    kernels.paged_attention(*batch.args(), out=out, **hints)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mixed_batch_with_long_contexts(dtype, assert_matches):
    batch = batch_of([(1, 8192), (1, 3000), (512, 512), (300, 8000), (0, 100), (64, 4160)], dtype=dtype)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
@pytest.mark.parametrize("block_size", [16, 32, 64])
def test_head_dims_and_block_sizes(head_dim, block_size, assert_matches):
    batch = batch_of([(700, 2100), (1, 33), (90, 90)], head_dim=head_dim, block_size=block_size)
    assert_matches(run(batch), paged_attention_ref(*batch.args()))
    decode = batch_of([(1, 5000), (1, 33), (1, 700)], head_dim=head_dim, block_size=block_size)
    assert_matches(run(decode), paged_attention_ref(*decode.args()))


def test_prefill_of_8k_tokens(assert_matches):
    batch = batch_of([(8192, 8192)])
    assert_matches(run(batch, max_query_len=8192, max_seq_len=8192), paged_attention_ref(*batch.args()))


@pytest.mark.parametrize("num_splits", [None, 1, 7, 64])
def test_decode_of_8k_contexts(num_splits, assert_matches):
    batch = batch_of([(1, 8192)] * 4 + [(1, 100)])
    assert_matches(run(batch, max_query_len=1, num_splits=num_splits), paged_attention_ref(*batch.args()))


def test_cache_larger_than_2_31_elements_uses_int64_offsets(assert_matches):
    """Pages past element 2^31 of the cache are read and written at the right place."""
    num_kv_heads, head_dim, block_size = 8, 128, 16
    num_blocks = 2**31 // (block_size * num_kv_heads * head_dim) + 64
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.empty(shape, dtype=torch.float16, device="cuda")
    value_cache = torch.empty(shape, dtype=torch.float16, device="cuda")
    small = batch_of([(1, 500), (40, 300)], dtype=torch.float16)
    # Move the small batch's pages to the far end of the big cache.
    used = small.block_tables.flatten().unique().long()  # includes the NaN block the padding points at
    high = num_blocks - 1 - torch.arange(used.numel(), device="cuda")
    remap = torch.full((small.key_cache.shape[0],), -1, dtype=torch.long, device="cuda")
    remap[used] = high
    key_cache[high] = small.key_cache[used]
    value_cache[high] = small.value_cache[used]
    tables = remap[small.block_tables.long()].to(torch.int32)
    args = (small.query, key_cache, value_cache, tables, small.cu_seqlens_q, small.seq_lens, small.scale)
    out = torch.full_like(small.query, float("nan"))
    kernels.paged_attention(*args, out=out)
    assert_matches(out, paged_attention_ref(*small.args()))

    key = torch.randn(3, num_kv_heads, head_dim, dtype=torch.float16, device="cuda")
    slots = torch.tensor([num_blocks * block_size - 1, -1, (num_blocks - 5) * block_size + 3], device="cuda")
    kernels.store_kv(key, key, key_cache, value_cache, slots)
    assert torch.equal(key_cache[-1, -1], key[0]) and torch.equal(value_cache[-5, 3], key[2])


def test_cuda_graph_replay_of_decode_matches_eager():
    """Captured once with a fixed num_splits, replayed for other contexts, tables and queries."""
    num_seqs, num_splits = 8, 8
    contexts = [4000, 17, 1, 900, 2048, 3333, 64, 129]
    batch = batch_of([(1, n) for n in contexts])
    static_query = batch.query.clone()
    static_tables = batch.block_tables.clone()
    static_seq_lens = batch.seq_lens.clone()
    static_out = torch.empty_like(batch.query)

    def step():
        kernels.paged_attention(static_query, batch.key_cache, batch.value_cache, static_tables,
                                batch.cu_seqlens_q, static_seq_lens, batch.scale, out=static_out,
                                max_query_len=1, num_splits=num_splits)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    perm = torch.randperm(num_seqs, device="cuda")
    replays = [
        (batch.block_tables, batch.seq_lens),  # as captured
        (batch.block_tables, batch.seq_lens // 3 + 1),  # shorter contexts: other split ranges, empty splits
        (batch.block_tables[perm], batch.seq_lens[perm]),  # sequences moved to other rows
    ]
    for tables, seq_lens in replays:
        static_query.copy_(torch.randn_like(static_query))
        static_tables.copy_(tables)
        static_seq_lens.copy_(seq_lens)
        graph.replay()
        eager = torch.empty_like(static_out)
        kernels.paged_attention(static_query, batch.key_cache, batch.value_cache, static_tables, batch.cu_seqlens_q,
                                static_seq_lens, batch.scale, out=eager, max_query_len=1, num_splits=num_splits)
        torch.cuda.synchronize()
        assert torch.equal(static_out, eager)
        ref = paged_attention_ref(static_query, batch.key_cache, batch.value_cache, static_tables,
                                  batch.cu_seqlens_q, static_seq_lens, batch.scale)
        torch.testing.assert_close(static_out, ref, atol=2e-2, rtol=2e-2)
