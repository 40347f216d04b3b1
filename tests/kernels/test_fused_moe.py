"""The fused MoE kernel matches its pure-torch reference over many token counts, expert counts and top-k
values (GPU, or the Triton interpreter on the CPU); the expert sort is exact; the engine's CPU expert loop
computes the same function; bad arguments are refused by name.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels.moe_kernel import MoETiles, moe_align, moe_tiles
from kernels.moe_reference import fused_moe_ref, moe_align_ref

TOLERANCES = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=2e-2)}


def moe_case(num_tokens, num_experts, top_k, hidden=32, inter=48, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=g)
    gate_up = torch.randn(num_experts, 2 * inter, hidden, generator=g) / hidden ** 0.5
    down = torch.randn(num_experts, hidden, inter, generator=g) / inter ** 0.5
    logits = torch.randn(num_tokens, num_experts, generator=g)
    weights, ids = torch.topk(torch.softmax(logits, -1), top_k, dim=-1)
    return [t.to(device) for t in (x.to(dtype), gate_up.to(dtype), down.to(dtype), weights.to(dtype), ids)]


def check(case, dtype):
    out = kernels.fused_moe(*case)
    assert out.dtype == dtype and not out.isnan().any()
    ref = fused_moe_ref(*[t.cpu() for t in case])
    torch.testing.assert_close(out.cpu(), ref, **TOLERANCES[dtype])


# ---- the expert sort ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "block_m"),
                         [(1, 4, 2, 4), (5, 3, 2, 4), (9, 8, 3, 16), (16, 16, 1, 4), (3, 64, 8, 16)])
def test_moe_align_sorts_pairs_by_expert_and_pads_each_run(num_tokens, num_experts, top_k, block_m):
    _, _, _, _, ids = moe_case(num_tokens, num_experts, top_k)
    sorted_ids, expert_ids, num_post = moe_align(ids, block_m, num_experts)
    want_ids, want_experts, used = moe_align_ref(ids, block_m, num_experts)
    pairs = num_tokens * top_k
    assert int(num_post) == used
    assert sorted_ids.shape[0] == pairs + num_experts * (block_m - 1)  # the fixed worst case
    assert sorted_ids[:used].tolist() == want_ids
    assert (sorted_ids[used:] == pairs).all()  # the tail is all sentinel
    assert expert_ids[:used // block_m].tolist() == want_experts


def test_moe_align_of_a_single_expert_run_has_one_tile_per_block():
    ids = torch.tensor([[2], [2], [2], [2], [2]])
    sorted_ids, expert_ids, num_post = moe_align(ids, 4, 3)
    assert sorted_ids[:8].tolist() == [0, 1, 2, 3, 4, 5, 5, 5]
    assert expert_ids[:2].tolist() == [2, 2] and int(num_post) == 8


# ---- the kernel -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_tokens", [1, 2, 7, 16, 33])
@pytest.mark.parametrize(("num_experts", "top_k"), [(1, 1), (4, 2), (8, 1), (8, 4), (16, 8)])
def test_kernel_matches_reference(num_tokens, num_experts, top_k, device):
    check(moe_case(num_tokens, num_experts, top_k, device=device, seed=num_tokens * 31 + num_experts), torch.float32)


@pytest.mark.parametrize(("hidden", "inter"), [(16, 16), (40, 24), (64, 130)])
def test_kernel_handles_sizes_that_are_not_tile_multiples(hidden, inter, device):
    check(moe_case(11, 6, 2, hidden=hidden, inter=inter, device=device, seed=hidden), torch.float32)


@pytest.mark.parametrize("num_tokens", [3, 40])
def test_kernel_in_half_precision(num_tokens, device):
    check(moe_case(num_tokens, 8, 2, hidden=64, inter=64, dtype=torch.float16, device=device), torch.float16)


def test_kernel_with_64_row_tiles_and_grouped_ordering(device, monkeypatch):
    """The large-batch tiles (64 rows, GROUP_M 8) on a batch with many tiles per expert."""
    import kernels.moe_kernel as fm

    monkeypatch.setattr(fm, "moe_tiles", lambda pairs, experts, dtype: MoETiles(64, 32, 32, 8, 4, 2))
    check(moe_case(150, 4, 2, device=device), torch.float32)


def test_empty_batch_returns_empty(device):
    x, gate_up, down, w, ids = moe_case(0, 4, 2, device=device)
    assert kernels.fused_moe(x, gate_up, down, w, ids).shape == (0, 32)


def test_tiles_pad_decode_batches_to_16_rows():
    assert moe_tiles(8, 128, torch.bfloat16).block_m == 16  # a decode token with top-8 of 128 experts
    assert moe_tiles(4096, 8, torch.bfloat16).block_m == 64


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_tokens=st.integers(1, 24), num_experts=st.integers(1, 12), top_k=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_random_routings_match_reference(num_tokens, num_experts, top_k, seed, device):
    top_k = min(top_k, num_experts)
    check(moe_case(num_tokens, num_experts, top_k, hidden=16, inter=16, device=device, seed=seed), torch.float32)


# ---- the engine's CPU path computes the same function ------------------------------------------------------

@pytest.mark.parametrize("grouped_mm", [True, False])
@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k"), [(1, 8, 2), (5, 4, 4), (20, 16, 3)])
def test_engine_cpu_experts_match_reference(num_tokens, num_experts, top_k, grouped_mm, monkeypatch):
    """The CPU path: torch's grouped_mm, or the per-expert loop of torch builds without it."""
    import engine.models.moe as moe

    if not grouped_mm:
        monkeypatch.setattr(moe, "_GROUPED_MM", None)
    elif moe._GROUPED_MM is None:
        pytest.skip("this torch has no grouped_mm")
    case = moe_case(num_tokens, num_experts, top_k)
    torch.testing.assert_close(moe.experts_cpu(*case), fused_moe_ref(*case), atol=1e-5, rtol=1e-5)


# ---- argument checks ----------------------------------------------------------------------------------------

def test_bad_arguments_are_refused_by_name(device):
    x, gate_up, down, w, ids = moe_case(3, 4, 2, device=device)
    with pytest.raises(ValueError, match="^gate_up"):
        kernels.fused_moe(x, gate_up[:, :-1], down, w, ids)
    with pytest.raises(ValueError, match="^down"):
        kernels.fused_moe(x, gate_up, down[:, :, :-1], w, ids)
    with pytest.raises(ValueError, match="^topk_ids"):
        kernels.fused_moe(x, gate_up, down, w, ids[:2])
    with pytest.raises(ValueError, match="^topk_ids"):
        kernels.fused_moe(x, gate_up, down, w, ids.float())
    with pytest.raises(ValueError, match="^gate_up"):
        kernels.fused_moe(x, gate_up.double(), down, w, ids)
