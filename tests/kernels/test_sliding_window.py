"""Sliding-window and soft-capped paged attention (both kernels) match the reference.

Batches come from kernels.batch with `sliding_window`: pages wholly before each sequence's first window are
released the way the engine releases them (NaN-filled, their table entries pointing at the NaN block), so a
kernel that looks up or loads a key outside the window produces NaN. Windows are chosen to land on and off
page and tile edges, shorter and longer than the query chunk, and longer than the context (no effect).
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

MIXED = [(1, 45), (37, 37), (13, 80), (0, 20), (1, 1), (5, 21), (1, 130)]


def batch_of(lens, window, **kw):
    q_lens, seq_lens = zip(*lens)
    kw.setdefault("num_heads", 8)
    kw.setdefault("num_kv_heads", 2)
    kw.setdefault("head_dim", 64)
    return make_paged_batch(list(q_lens), list(seq_lens), sliding_window=window, **kw)


def run(batch, **kw) -> torch.Tensor:
    out = torch.full_like(batch.query, float("nan"))
    kernels.paged_attention(*batch.args(), out=out, sliding_window=batch.sliding_window, **kw)
    return out


def ref(batch, **kw) -> torch.Tensor:
    return paged_attention_ref(*batch.args(), sliding_window=batch.sliding_window, **kw)


@pytest.mark.parametrize(("window", "dtype"), [(1, torch.float32), (7, torch.float16), (16, torch.float32),
                                               (17, torch.float16), (40, torch.float32), (1000, torch.float32)])
def test_varlen_kernel_with_window(window, dtype, device, assert_matches):
    batch = batch_of(MIXED, window, dtype=dtype, device=device)
    assert_matches(run(batch), ref(batch))


@pytest.mark.parametrize(("window", "num_splits"), [(1, 1), (5, 3), (32, 1), (33, 4), (100, 2), (100, 8), (5000, 3)])
def test_decode_kernel_with_window(window, num_splits, device, assert_matches):
    batch = batch_of([(1, n) for n in (1, 17, 64, 100, 257)], window, num_heads=4, dtype=torch.float32,
                     device=device)
    assert_matches(run(batch, max_query_len=1, num_splits=num_splits), ref(batch))


def test_window_changes_the_result(device):
    """The windowed reference is not the full one, so the tests above could fail."""
    batch = batch_of([(1, 100), (20, 60)], 16, dtype=torch.float32, device=device)
    full = make_paged_batch([1, 20], [100, 60], num_heads=8, num_kv_heads=2, head_dim=64, device=device)
    assert not torch.allclose(ref(batch), paged_attention_ref(*full.args()), atol=1e-3)


@pytest.mark.parametrize("softcap", [0.5, 50.0])
def test_softcap_in_both_kernels(softcap, device, assert_matches):
    batch = batch_of(MIXED[:4], None, num_heads=4, dtype=torch.float32, device=device)
    assert_matches(run(batch, softcap=softcap), ref(batch, softcap=softcap))
    decode = batch_of([(1, n) for n in (3, 70, 200)], None, num_heads=4, dtype=torch.float32, device=device)
    assert_matches(run(decode, softcap=softcap, max_query_len=1, num_splits=4), ref(decode, softcap=softcap))


def test_softcap_with_window_and_large_scores(device, assert_matches):
    """Scores far beyond the cap saturate tanh at +-1 without overflow."""
    batch = batch_of(MIXED, 24, dtype=torch.float32, device=device)
    batch.scale = 3.0
    out = run(batch, softcap=2.0)
    assert_matches(out, ref(batch, softcap=2.0))
    assert not torch.allclose(out, ref(batch), atol=1e-2)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lens=st.lists(st.tuples(st.integers(1, 90), st.floats(0, 1)), min_size=1, max_size=4),
    window=st.integers(1, 70),
    block_size=st.sampled_from([16, 8, 32]),
    tiles=st.sampled_from([AttentionTiles(16, 16, 4, 1), AttentionTiles(32, 32, 4, 1), AttentionTiles(64, 16, 4, 1)]),
    seed=st.integers(0, 2**16),
)
def test_random_windows_in_small_tiles(lens, window, block_size, tiles, seed, device, assert_matches):
    seq_lens = [n for n, _ in lens]
    q_lens = [max(1, round(frac * n)) for n, frac in lens]
    batch = make_paged_batch(q_lens, seq_lens, num_heads=4, num_kv_heads=2, head_dim=32, block_size=block_size,
                             dtype=torch.float32, device=device, seed=seed, sliding_window=window)
    out = torch.full_like(batch.query, float("nan"))
    unified_attention(*batch.args()[:6], batch.scale, out, tiles, window)
    assert_matches(out, ref(batch))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_window_is_refused_by_name(bad, device):
    batch = batch_of([(1, 5)], None, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="^sliding_window"):
        kernels.paged_attention(*batch.args(), sliding_window=bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), "5"])
def test_bad_softcap_is_refused_by_name(bad, device):
    batch = batch_of([(1, 5)], None, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="^softcap"):
        kernels.paged_attention(*batch.args(), softcap=bad)
