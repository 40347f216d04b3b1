"""store_kv writes token t's key/value into key_cache.view(-1, KVH, D)[slot_mapping[t]] and skips slot -1."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.reference import store_kv_ref

SENTINEL = 7.0


def caches(num_blocks, block_size, num_kv_heads, head_dim, dtype, device):
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return (torch.full(shape, SENTINEL, dtype=dtype, device=device),
            torch.full(shape, -SENTINEL, dtype=dtype, device=device))


def random_slots(num_tokens, num_slots, skip_every, slot_dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randperm(num_slots, generator=gen)[:num_tokens]
    if skip_every:
        slots[::skip_every] = -1
    return slots.to(slot_dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(2, 64, 16), (3, 80, 32), (1, 128, 16), (8, 64, 8)])
def test_each_token_lands_in_its_slot(dtype, slot_dtype, num_kv_heads, head_dim, block_size, device):
    key_cache, value_cache = caches(6, block_size, num_kv_heads, head_dim, dtype, device)
    key = torch.randn(20, num_kv_heads, head_dim, device=device).to(dtype)
    value = torch.randn(20, num_kv_heads, head_dim, device=device).to(dtype)
    slots = random_slots(20, 6 * block_size, 0, slot_dtype, device)
    kernels.store_kv(key, value, key_cache, value_cache, slots)
    flat_k, flat_v = key_cache.view(-1, num_kv_heads, head_dim), value_cache.view(-1, num_kv_heads, head_dim)
    assert torch.equal(flat_k[slots.long()], key)
    assert torch.equal(flat_v[slots.long()], value)


def test_negative_slots_are_skipped_and_other_rows_untouched(device):
    key_cache, value_cache = caches(4, 16, 2, 64, torch.float32, device)
    key, value = torch.randn(30, 2, 64, device=device), torch.randn(30, 2, 64, device=device)
    slots = random_slots(30, 64, 3, torch.int64, device, seed=1)
    kernels.store_kv(key, value, key_cache, value_cache, slots)

    written = slots >= 0
    flat_k, flat_v = key_cache.view(-1, 2, 64), value_cache.view(-1, 2, 64)
    assert torch.equal(flat_k[slots[written]], key[written])
    assert torch.equal(flat_v[slots[written]], value[written])
    untouched = torch.ones(64, dtype=torch.bool, device=device)
    untouched[slots[written]] = False
    assert (flat_k[untouched] == SENTINEL).all() and (flat_v[untouched] == -SENTINEL).all()


def test_matches_reference_with_strided_key_and_value(device):
    """key/value sliced out of a fused qkv buffer (token stride > KVH * D) are read correctly."""
    qkv = torch.randn(12, 8 + 2 + 2, 32, device=device, dtype=torch.float16)
    key, value = qkv[:, 8:10], qkv[:, 10:12]
    slots = random_slots(12, 48, 5, torch.int64, device, seed=2)
    got_k, got_v = caches(3, 16, 2, 32, torch.float16, device)
    want_k, want_v = caches(3, 16, 2, 32, torch.float16, device)
    kernels.store_kv(key, value, got_k, got_v, slots)
    store_kv_ref(key, value, want_k, want_v, slots)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)


def test_no_tokens_is_a_no_op(device):
    key_cache, value_cache = caches(2, 16, 2, 64, torch.float32, device)
    empty = torch.empty(0, 2, 64, device=device)
    kernels.store_kv(empty, empty, key_cache, value_cache, torch.empty(0, dtype=torch.int64, device=device))
    assert (key_cache == SENTINEL).all() and (value_cache == -SENTINEL).all()
