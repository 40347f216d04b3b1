"""The pure-torch references agree with an independent dense computation, so they can serve as the oracle.

Pages are filled here token by token from contiguous K/V (not with the reference's own gather), and the
expected attention comes from torch SDPA with is_causal on the whole contiguous sequence.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.reference import paged_attention_ref, store_kv_ref


def _paged_copy(k: torch.Tensor, v: torch.Tensor, block_size: int, seed: int):
    """Scatter contiguous k/v [L, KVH, D] into a cache of randomly ordered pages, one token at a time."""
    seq_len, num_kv_heads, head_dim = k.shape
    num_pages = -(-seq_len // block_size)
    num_blocks = num_pages + 3
    gen = torch.Generator().manual_seed(seed)
    table = torch.randperm(num_blocks, generator=gen)[:num_pages].to(torch.int32)
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    value_cache = torch.full_like(key_cache, float("nan"))
    for pos in range(seq_len):
        key_cache[table[pos // block_size], pos % block_size] = k[pos]
        value_cache[table[pos // block_size], pos % block_size] = v[pos]
    return key_cache, value_cache, table


def _dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA over a whole sequence: q [L, H, D], k/v [L, KVH, D] -> [L, H, D]."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
    return out.transpose(0, 1)


@pytest.mark.parametrize("seq_len,block_size", [(1, 16), (16, 16), (37, 16), (70, 32), (9, 1)])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (9, 3)])
def test_whole_prefill_equals_dense_causal_sdpa(seq_len, block_size, num_heads, num_kv_heads):
    gen = torch.Generator().manual_seed(seq_len)
    q = torch.randn(seq_len, num_heads, 32, generator=gen)
    k = torch.randn(seq_len, num_kv_heads, 32, generator=gen)
    v = torch.randn(seq_len, num_kv_heads, 32, generator=gen)
    key_cache, value_cache, table = _paged_copy(k, v, block_size, seed=seq_len)
    out = paged_attention_ref(q, key_cache, value_cache, table[None], torch.tensor([0, seq_len], dtype=torch.int32),
                              torch.tensor([seq_len], dtype=torch.int32), 32 ** -0.5)
    torch.testing.assert_close(out, _dense_causal(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_len", [1, 5, 40])
def test_query_at_the_end_of_a_context_equals_last_rows_of_dense_causal(q_len):
    """Decode (q_len 1), chunked prefill and prefix-cache hits: new tokens sit at positions seq_len - q_len..."""
    seq_len, num_heads, num_kv_heads, head_dim = 41, 6, 2, 16
    gen = torch.Generator().manual_seed(q_len)
    q = torch.randn(seq_len, num_heads, head_dim, generator=gen)
    k = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen)
    v = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen)
    key_cache, value_cache, table = _paged_copy(k, v, 16, seed=q_len)
    out = paged_attention_ref(q[-q_len:], key_cache, value_cache, table[None],
                              torch.tensor([0, q_len], dtype=torch.int32), torch.tensor([seq_len], dtype=torch.int32),
                              head_dim ** -0.5)
    torch.testing.assert_close(out, _dense_causal(q, k, v)[-q_len:], atol=1e-5, rtol=1e-5)


def test_sequences_of_a_batch_are_independent():
    """Each sequence of a flattened batch gets exactly what it gets alone."""
    lens = [(3, 20), (0, 5), (1, 33), (17, 17)]  # (q_len, seq_len)
    gen = torch.Generator().manual_seed(0)
    queries, caches, expected = [], [], []
    for q_len, seq_len in lens:
        q = torch.randn(seq_len, 4, 16, generator=gen)
        k, v = torch.randn(seq_len, 2, 16, generator=gen), torch.randn(seq_len, 2, 16, generator=gen)
        queries.append(q[seq_len - q_len:])
        caches.append(_paged_copy(k, v, 16, seed=seq_len))
        expected.append(_dense_causal(q, k, v)[seq_len - q_len:])
    # Concatenate the per-sequence caches, shifting each table by the blocks before it.
    offsets = [0]
    for key_cache, _, _ in caches:
        offsets.append(offsets[-1] + key_cache.shape[0])
    tables = torch.full((len(lens), 4), -1, dtype=torch.int32)
    for s, (_, _, table) in enumerate(caches):
        tables[s, :table.numel()] = table + offsets[s]
    cu = torch.tensor([0, 3, 3, 4, 21], dtype=torch.int32)
    out = paged_attention_ref(torch.cat(queries), torch.cat([c[0] for c in caches]), torch.cat([c[1] for c in caches]),
                              tables, cu, torch.tensor([s for _, s in lens], dtype=torch.int32), 0.25)
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_query_with_no_visible_key_gets_zeros():
    """seq_len 0 (e.g. a padded decode slot) has nothing to attend to: zeros, not NaN."""
    cache = torch.randn(2, 16, 1, 16)
    out = paged_attention_ref(torch.randn(1, 2, 16), cache, cache, torch.zeros(1, 1, dtype=torch.int32),
                              torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32), 0.25)
    assert torch.equal(out, torch.zeros(1, 2, 16))


def test_store_kv_ref_writes_each_token_to_its_slot_and_skips_negative_slots():
    key_cache = torch.full((3, 4, 2, 8), 7.0)
    value_cache = torch.full((3, 4, 2, 8), -7.0)
    key, value = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    slots = torch.tensor([9, -1, 0, 6])
    store_kv_ref(key, value, key_cache, value_cache, slots)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(key_cache.view(-1, 2, 8)[slot], key[t])
            assert torch.equal(value_cache.view(-1, 2, 8)[slot], value[t])
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[[9, 0, 6]] = False
    assert (key_cache.view(-1, 2, 8)[untouched] == 7.0).all()
    assert (value_cache.view(-1, 2, 8)[untouched] == -7.0).all()
