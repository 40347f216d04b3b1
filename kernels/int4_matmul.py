"""Weight-only int4 GEMM for few rows (decode): y = x @ dequant(q)^T, the codes unpacked and scaled in registers.

The weight format (the engine's `Int4Linear` off the CPU):

    qweight           uint8 [N, K / 2]       byte j of row n: code of column 2j in the high nibble, 2j + 1 in the low
    scales_and_zeros  [N, K / g, 2]          (scale, zero) per output channel n and group of g input columns
    w[n, k] = (code - 8) * scale + zero      computed in fp32 as code * scale + (zero - 8 * scale)

Grid (N tiles, M tiles, splits): program (j, i, s) owns out[i-th BLOCK_M rows, j-th BLOCK_N columns] over the
s-th run of BLOCK_K-wide column blocks of K. Each step loads x [BLOCK_M, BLOCK_K] and BLOCK_K / 2 bytes of
each of its BLOCK_N weight rows (contiguous, so a row's bytes arrive in whole sectors), unpacks them to codes,
scales each group of the tile by its (scale, zero), rounds the weights to x's dtype and accumulates
tl.dot(x, w^T) in fp32. A decode batch has few rows, so the N tiles alone would leave most SMs idle: the
launcher then splits K as well (`int4_splits`), each split writing fp32 partial sums [splits, M, N] that a
torch sum adds up (in a fixed order: the result does not depend on scheduling). Without splits the program
stores its tile in x's dtype. Nothing here reads a device value on the host (CUDA-graph safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.launch import Launch
from kernels.planning import cdiv
from kernels.unified_attention import dot_precision

MAX_SPLITS = 16
MIN_BLOCKS_PER_SPLIT = 4  # below this a split's partial-sum write costs more than its share of the weights


@dataclass(frozen=True)
class Int4Tiles:
    block_m: int
    block_n: int
    block_k: int  # the widest tile along K; the launcher halves it until it divides K
    num_warps: int
    num_stages: int


def int4_tiles(m: int, dtype: torch.dtype) -> Int4Tiles:
    """The smallest tl.dot row tile (16) that holds the batch, up to 64 rows; 64 output channels by 128 input
    columns (64 bytes of each weight row per step). fp32 (a correctness dtype, whose ieee tl.dot runs on FMA
    units) gets 32 x 32 tiles over 8 warps: at 64 rows 32 x 64 over 4 or 8 warps spills.
    Checked to compile without spills (kernels.compile_report)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    if dtype == torch.float32:
        return Int4Tiles(block_m, 32, 32, 8, 2)
    return Int4Tiles(block_m, 64, 128, 4, 4)


def int4_block_k(k: int, tiles: Int4Tiles) -> int:
    """tiles.block_k, halved until it divides K (K is a multiple of the group size, itself at least 32)."""
    block_k = tiles.block_k
    while k % block_k:
        block_k //= 2
    return block_k


def int4_splits(num_programs: int, num_k_blocks: int, num_sms: int) -> int:
    """How many runs K is split into: enough programs for two per SM, each run at least MIN_BLOCKS_PER_SPLIT
    blocks long, at most MAX_SPLITS; then as few runs as give the same run length (none is empty)."""
    want = cdiv(2 * num_sms, num_programs)
    splits = max(1, min(want, num_k_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))
    return cdiv(num_k_blocks, cdiv(num_k_blocks, splits))


def int4_num_splits(m: int, n: int, k: int, dtype: torch.dtype, num_sms: int) -> int:
    """The split count the launcher uses for an [M, K] x [N, K] product (int4_splits over its tiles)."""
    tiles = int4_tiles(m, dtype)
    return int4_splits(cdiv(n, tiles.block_n) * cdiv(m, tiles.block_m), k // int4_block_k(k, tiles), num_sms)


@triton.jit(do_not_specialize=["M", "blocks_per_split"])  # M changes per batch; N, K are fixed per layer
def _int4_matmul_kernel(
    x_ptr, qweight_ptr, sz_ptr, out_ptr, part_out_ptr,
    M, N, K, blocks_per_split,
    stride_xm, stride_qn, stride_szn, stride_om,
    GROUP_SIZE: tl.constexpr, GROUPS_PER_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, USE_PARTIALS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    SUB: tl.constexpr = BLOCK_K // GROUPS_PER_BLOCK  # columns of the tile that share one (scale, zero)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rows_n = offs_n.to(tl.int64)
    offs_g = tl.arange(0, GROUPS_PER_BLOCK)
    first = pid_s * blocks_per_split
    last = tl.minimum(first + blocks_per_split, K // BLOCK_K)
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + first * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    q_ptrs = (qweight_ptr + rows_n[:, None] * stride_qn + first * (BLOCK_K // 2)
              + tl.arange(0, BLOCK_K // 2)[None, :])
    sz_rows = sz_ptr + rows_n[:, None] * stride_szn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for b in range(first, last):
        x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
        packed = tl.load(q_ptrs, mask=n_ok[:, None], other=0)
        group = (b * BLOCK_K + offs_g * SUB) // GROUP_SIZE  # [GROUPS_PER_BLOCK]
        sz_ptrs = sz_rows + group[None, :] * 2
        scale = tl.load(sz_ptrs, mask=n_ok[:, None], other=0.0).to(tl.float32)  # [BLOCK_N, GROUPS_PER_BLOCK]
        low = tl.load(sz_ptrs + 1, mask=n_ok[:, None], other=0.0).to(tl.float32) - 8.0 * scale  # code 0's weight
        codes = tl.interleave(packed >> 4, packed & 15).to(tl.float32)  # [BLOCK_N, BLOCK_K], high nibble first
        w = tl.reshape(codes, (BLOCK_N, GROUPS_PER_BLOCK, SUB)) * scale[:, :, None] + low[:, :, None]
        w = tl.reshape(w, (BLOCK_N, BLOCK_K)).to(x_ptr.dtype.element_ty)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        q_ptrs += BLOCK_K // 2
    mask = m_ok[:, None] & n_ok[None, :]
    if USE_PARTIALS:
        part = part_out_ptr + (pid_s * M + offs_m.to(tl.int64))[:, None] * N + offs_n[None, :]
        tl.store(part, acc, mask=mask)
    else:
        out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def launch_constants(group_size: int, block_k: int, tiles: Int4Tiles, use_partials: bool, dtype: torch.dtype) -> dict:
    """The kernel's constexpr arguments (shared with kernels.compile_report)."""
    return dict(GROUP_SIZE=group_size, GROUPS_PER_BLOCK=max(1, block_k // group_size), BLOCK_M=tiles.block_m,
                BLOCK_N=tiles.block_n, BLOCK_K=block_k, USE_PARTIALS=use_partials,
                DOT_PRECISION=dot_precision(dtype))


def int4_matmul_launch(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                       out: torch.Tensor, partials: torch.Tensor | None, num_splits: int) -> Launch:
    """The launch for validated arguments; `partials` is fp32 [num_splits, M, N] when num_splits > 1."""
    m, k = x.shape
    n = qweight.shape[0]
    tiles = int4_tiles(m, x.dtype)
    block_k = int4_block_k(k, tiles)
    blocks_per_split = cdiv(k // block_k, num_splits)
    use_partials = num_splits > 1
    args = (x, qweight, scales_and_zeros, out, partials if use_partials else out, m, n, k, blocks_per_split,
            x.stride(0), qweight.stride(0), scales_and_zeros.stride(0), out.stride(0))
    kwargs = dict(launch_constants(group_size, block_k, tiles, use_partials, x.dtype), num_warps=tiles.num_warps,
                  num_stages=tiles.num_stages)
    return Launch(_int4_matmul_kernel, (cdiv(n, tiles.block_n), cdiv(m, tiles.block_m), num_splits), args, kwargs)


def int4_matmul(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                num_sms: int) -> torch.Tensor:
    """Launch for validated arguments; returns y [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    num_splits = int4_num_splits(m, n, k, x.dtype, num_sms)
    partials = torch.empty((num_splits, m, n), dtype=torch.float32, device=x.device) if num_splits > 1 else None
    int4_matmul_launch(x, qweight, scales_and_zeros, group_size, out, partials, num_splits).run()
    if partials is not None:
        out.copy_(partials.sum(dim=0))
    return out
