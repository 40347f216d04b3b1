"""A fused mixture-of-experts MLP on the GPU: tokens sorted by expert, one grouped GEMM per projection (the
scheme of vLLM's fused_moe).

A batch of T tokens routed to k experts each makes T * k (token, slot) pairs; pair p = t * k + j goes to
expert ids[t, j]. `moe_align` sorts the pairs by expert and pads each expert's run to a multiple of BLOCK_M
with a sentinel (T * k), so every BLOCK_M-row tile of the sorted list belongs to exactly one expert:

    pairs by expert:   e0: p3 p7 p9 . | e2: p1 p2 . . | e5: p0 p4 p5 p6 | p8 . . .     (BLOCK_M = 4, . = sentinel)
    expert of tile:    0              | 2             | 5               | 7

`_fused_moe_kernel` then computes C[pair] = A[row(pair)] @ B[expert]^T for one (tile of pairs, tile of N)
per program, gathering the tile's A rows by pair (row = pair // TOP_K for the first projection, whose A is
the token's hidden state; row = pair for the second, whose A is the pair's own activation), and scattering
its C rows back to pair order. Sentinel rows are masked out of every load and store. The two launches:

    gate_up:  inter[p] = gate_up[e] @ x[p // k]              [T*k, 2I]
    act:      h[p] = silu(inter[p, :I]) * inter[p, I:]       (torch)
    down:     y[p] = weight[p] * (down[e] @ h[p])            [T*k, H]   (MUL_ROUTED_WEIGHT)
    out[t] = sum_j y[t * k + j]

Nothing reads a device value on the host (no .item(), no data-dependent sizes): the sorted list has the
fixed worst-case length T*k + E*(BLOCK_M - 1), and tiles past the real end (`num_post`, on the device)
return at once, so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.planning import cdiv
from kernels.unified_attention import dot_precision


@dataclass(frozen=True)
class MoETiles:
    block_m: int  # (token, slot) pairs per tile: the padding unit of each expert's run
    block_n: int
    block_k: int
    group_m: int  # tiles of M that share one sweep over N (L2 reuse of the expert's weights)
    num_warps: int
    num_stages: int


def moe_tiles(num_pairs: int, num_experts: int, dtype: torch.dtype) -> MoETiles:
    """Small batches (few pairs per expert, decode) pad each expert to 16 rows; larger ones use 64-row tiles.
    fp32 (a correctness dtype) gets small tiles. Checked to compile without spills (kernels.compile_report)."""
    if dtype == torch.float32:
        return MoETiles(16, 32, 32, 1, 4, 2)
    if num_pairs <= 2 * num_experts:
        return MoETiles(16, 64, 64, 1, 4, 3)
    return MoETiles(64, 128, 64, 8, 8, 3)


def moe_align(topk_ids: torch.Tensor, block_m: int, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_pair_ids [T*k + E*(block_m-1)] int32, padded with T*k; expert_ids [one per block_m tile] int32;
    num_post [1] int32, the padded length actually used), all on topk_ids' device, without a host sync."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    n, device = flat.numel(), flat.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)  # pair ids grouped by expert, in pair order within an expert
    experts = flat[order]
    rank = torch.arange(n, device=device) - (torch.cumsum(counts, 0) - counts)[experts]
    max_len = n + num_experts * (block_m - 1)
    sorted_ids = torch.full((max_len,), n, dtype=torch.int32, device=device)
    sorted_ids[(ends - padded)[experts] + rank] = order.to(torch.int32)
    tile_starts = torch.arange(cdiv(max_len, block_m), device=device) * block_m
    expert_ids = torch.searchsorted(ends, tile_starts, right=True).clamp_(max=num_experts - 1).to(torch.int32)
    return sorted_ids, expert_ids, ends[-1:].to(torch.int32)


@triton.jit(do_not_specialize=["num_valid_pairs", "EM"])  # N, K: fixed per model, specialised (divisibility)
def _fused_moe_kernel(
    a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr,
    N, K, num_valid_pairs, EM,
    stride_am, stride_be, stride_bn, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    TOP_K: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(EM, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    if pid_m * BLOCK_M >= tl.load(num_tokens_post_padded_ptr):
        return  # past the last expert's padded run

    offs_pair = tl.load(sorted_token_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    pair_ok = offs_pair < num_valid_pairs  # sentinel rows are padding
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    # rows of A, B and C are contiguous along K / N (checked by kernels.moe_validation)
    a_ptrs = a_ptr + (offs_pair // TOP_K)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + expert * stride_be + offs_n.to(tl.int64)[None, :] * stride_bn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kk * BLOCK_K
        a = tl.load(a_ptrs, mask=pair_ok[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if MUL_ROUTED_WEIGHT:
        weight = tl.load(topk_weights_ptr + offs_pair, mask=pair_ok, other=0.0)
        acc = acc * weight[:, None]
    c_ptrs = c_ptr + offs_pair[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=pair_ok[:, None] & n_ok[None, :])


def launch_constants(tiles: MoETiles, top_k: int, mul_routed_weight: bool, dtype: torch.dtype) -> dict:
    """The kernel's constexpr arguments (shared with kernels.compile_report)."""
    return dict(BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, GROUP_M=tiles.group_m,
                TOP_K=top_k, MUL_ROUTED_WEIGHT=mul_routed_weight, DOT_PRECISION=dot_precision(dtype))


def _grouped_gemm(a, b, c, weights, sorted_ids, expert_ids, num_post, num_valid_pairs: int, top_k: int,
                  mul_routed_weight: bool, tiles: MoETiles) -> None:
    em, n, k = sorted_ids.shape[0], b.shape[1], b.shape[2]
    grid = (cdiv(em, tiles.block_m) * cdiv(n, tiles.block_n),)
    _fused_moe_kernel[grid](
        a, b, c, weights, sorted_ids, expert_ids, num_post, n, k, num_valid_pairs, em,
        a.stride(0), b.stride(0), b.stride(1), c.stride(0),
        **launch_constants(tiles, top_k, mul_routed_weight, a.dtype),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )


def fused_moe(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """Launch both grouped GEMMs (arguments already validated by kernels.fused_moe)."""
    num_tokens, top_k = topk_ids.shape
    num_experts, inter2 = gate_up.shape[0], gate_up.shape[1]
    pairs = num_tokens * top_k
    if pairs == 0:
        return torch.zeros_like(x)
    tiles = moe_tiles(pairs, num_experts, x.dtype)
    sorted_ids, expert_ids, num_post = moe_align(topk_ids, tiles.block_m, num_experts)
    weights = topk_weights.reshape(-1).to(torch.float32)
    inter = torch.empty((pairs, inter2), dtype=x.dtype, device=x.device)
    _grouped_gemm(x, gate_up, inter, weights, sorted_ids, expert_ids, num_post, pairs, top_k, False, tiles)
    gate, up = inter.chunk(2, dim=-1)
    act = torch.nn.functional.silu(gate).mul_(up)
    y = torch.empty((pairs, down.shape[1]), dtype=x.dtype, device=x.device)
    _grouped_gemm(act, down, y, weights, sorted_ids, expert_ids, num_post, pairs, 1, True, tiles)
    return y.view(num_tokens, top_k, -1).sum(dim=1)
