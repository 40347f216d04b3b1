"""The weight-only int4 GEMM (kernels.int4_mm) matches its pure-torch reference and a dense matmul over the
dequantized weights for batch sizes 1..70, output sizes that are not tile multiples and group sizes 32 to 256
(the Triton interpreter on the CPU: fp32 and fp16); its nibble order is pinned; K splits add up to the
unsplit result; bad arguments are refused by name.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.int4_matmul import MAX_SPLITS, Int4Tiles, int4_block_k, int4_matmul_launch, int4_splits, int4_tiles
from kernels.reference import int4_matmul_ref, unpack_int4_ref


def pack(codes: torch.Tensor) -> torch.Tensor:
    """int codes [N, K] in 0..15 -> uint8 [N, K / 2], column 2j in the high nibble of byte j."""
    return ((codes[:, 0::2] << 4) | codes[:, 1::2]).to(torch.uint8)


def int4_case(m, n, k, g, dtype=torch.float32, device="cpu", seed=0):
    """x [m, k] and a random int4 weight whose dequantized rows have ~unit-variance products with x."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    codes = torch.randint(0, 16, (n, k), generator=gen)
    scale = (torch.rand(n, k // g, generator=gen) + 0.5) / (4 * k ** 0.5)
    zero = torch.randn(n, k // g, generator=gen) * 0.02
    sz = torch.stack([scale, zero], dim=-1)
    return x.to(device, dtype), pack(codes).to(device), sz.to(device, dtype), codes


def dense(x, codes, sz, g):
    """F.linear over the weights dequantized in fp32 and rounded to x's dtype (the engine's prefill path)."""
    n, k = codes.shape
    w = (codes.float().view(n, k // g, g) - 8) * sz[..., 0:1].float() + sz[..., 1:2].float()
    return torch.nn.functional.linear(x, w.view(n, k).to(x.dtype))


TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=3e-3, rtol=3e-3)}
SHAPES = [  # (M, N, K, group size)
    (1, 64, 256, 32), (1, 40, 512, 128), (2, 96, 384, 64), (7, 130, 256, 256), (16, 32, 1024, 32),
    (17, 64, 96, 32), (33, 72, 512, 64), (64, 64, 256, 128), (70, 48, 640, 128),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("m", "n", "k", "g"), SHAPES)
def test_kernel_matches_the_reference_and_the_dense_dequantized_matmul(m, n, k, g, dtype, device):
    x, q, sz, codes = int4_case(m, n, k, g, dtype, device, seed=m * 1000 + n + k)
    out = kernels.int4_mm(x, q, sz, g)
    assert out.shape == (m, n) and out.dtype == dtype and not out.isnan().any()
    ref = int4_matmul_ref(x.cpu(), q.cpu(), sz.cpu(), g)
    torch.testing.assert_close(out.cpu(), ref, **TOL[dtype])
    if dtype == torch.float32:
        torch.testing.assert_close(dense(x.cpu(), codes, sz.cpu(), g), ref, **TOL[dtype])
    else:  # the kernel rounds the weights to fp16 as the dense path does: closer to it than to the fp32 oracle
        torch.testing.assert_close(out.cpu(), dense(x.cpu().float(), codes, sz.cpu(), g).half(), **TOL[dtype])


def test_rows_of_the_identity_read_back_each_weight_in_the_documented_nibble_order(device):
    """x = I picks out w^T exactly (fp32, one nonzero product per output): the high nibble of byte j is
    column 2j, and each column uses its own group's (scale, zero)."""
    n, k, g = 32, 64, 32
    codes = torch.arange(n * k).reshape(n, k) % 16
    sz = torch.stack([torch.full((n, k // g), 0.5) * torch.tensor([1.0, 2.0]),
                      torch.arange(n * k // g, dtype=torch.float32).reshape(n, k // g)], dim=-1)
    out = kernels.int4_mm(torch.eye(k, device=device), pack(codes).to(device), sz.to(device), g)
    want = (codes.float() - 8) * sz[..., 0].repeat_interleave(g, 1) + sz[..., 1].repeat_interleave(g, 1)
    assert torch.equal(out.cpu(), want.t())
    assert torch.equal(unpack_int4_ref(pack(codes)), codes.int())


@pytest.mark.parametrize("num_splits", [2, 3, 8])
def test_split_k_partial_sums_add_up_to_the_unsplit_result(num_splits, device):
    m, n, k, g = 3, 64, 1024, 32
    x, q, sz, _ = int4_case(m, n, k, g, device=device, seed=num_splits)
    one, split = (torch.full((m, n), float("nan"), device=device) for _ in range(2))
    int4_matmul_launch(x, q, sz, g, one, None, 1).run()
    partials = torch.full((num_splits, m, n), float("nan"), device=device)
    int4_matmul_launch(x, q, sz, g, split, partials, num_splits).run()
    torch.testing.assert_close(partials.sum(0), one, atol=1e-5, rtol=1e-5)  # every partial written
    torch.testing.assert_close(one.cpu(), int4_matmul_ref(x.cpu(), q.cpu(), sz.cpu(), g), atol=1e-5, rtol=1e-5)


def test_no_rows_give_an_empty_result(device):
    x, q, sz, _ = int4_case(1, 32, 64, 32, device=device)
    assert kernels.int4_mm(x[:0], q, sz, 32).shape == (0, 32)


def test_tiles_grow_with_the_batch_and_block_k_divides_k():
    assert [int4_tiles(m, torch.bfloat16).block_m for m in (1, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]
    tiles = Int4Tiles(16, 64, 128, 4, 4)
    assert [int4_block_k(k, tiles) for k in (4096, 14336, 96, 160, 64)] == [128, 128, 32, 32, 64]


def test_splits_fill_the_sms_without_empty_or_short_runs():
    # Llama-3.1-8B o_proj at one row: 64 N tiles want 5 runs of its 32 K blocks of 128: 7 blocks each (last 4)
    assert int4_splits(64, 32, 132) == 5
    assert int4_splits(448, 32, 132) == 1  # gate_up (N = 28672): the N tiles alone fill the SMs
    assert int4_splits(64, 112, 132) == 5  # down_proj (K = 14336): 5 runs of 23 blocks (the last 20)
    assert int4_splits(1, 4096, 132) == MAX_SPLITS
    assert int4_splits(1, 7, 132) == 1  # too few blocks to share


@pytest.mark.parametrize(("change", "match"), [
    (dict(x=torch.zeros(2, 64, dtype=torch.int32)), "^x: dtype"),
    (dict(qweight=torch.zeros(32, 32, dtype=torch.int8)), "^qweight: dtype"),
    (dict(qweight=torch.zeros(32, 16, dtype=torch.uint8)), r"^qweight: expected \[N, 32\]"),
    (dict(scales_and_zeros=torch.zeros(32, 1, 2)), r"^scales_and_zeros: expected shape \(32, 2, 2\)"),
    (dict(scales_and_zeros=torch.zeros(32, 2, 4)[..., :2]), "^scales_and_zeros: each row's"),
    (dict(group_size=48), "^group_size: expected"),
    (dict(group_size=16), "^group_size: expected"),
    (dict(group_size=128), "^group_size: 128 does not divide"),
])
def test_bad_arguments_are_refused_by_name(change, match):
    args = dict(x=torch.zeros(2, 64), qweight=torch.zeros(32, 32, dtype=torch.uint8),
                scales_and_zeros=torch.zeros(32, 2, 2), group_size=32)
    with pytest.raises(ValueError, match=match):
        kernels.int4_mm(**(args | change))
