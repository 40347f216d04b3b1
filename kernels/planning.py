"""Launch planning for paged attention: which kernel runs, with which tiles, and how many KV splits.

Everything here is plain Python (no triton), so it can be unit-tested anywhere and read by the benchmark.
The tile choices and split constants are the tuning knobs: reasoned for Hopper (H200: 132 SMs, 227 KiB of
shared memory per block) and checked to compile without register spills (kernels.compile_report), but not yet
timed there; change them here and nowhere else.

`plan_paged_attention` never reads tensor values when the caller gives the hints it needs, so a decode step
planned with `max_query_len=1` and a fixed `num_splits` can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Hopper has 132 SMs; used when the device cannot be asked (CPU, interpreter).
DEFAULT_NUM_SMS = 132
# The reduce kernel holds every split of one head in a single tile, so the count is bounded.
MAX_NUM_SPLITS = 64
# A split should stream at least this many KV tiles, or the reduce pass costs more than the split saves.
MIN_TILES_PER_SPLIT = 4
# When a decode batch is split, aim for this many programs per SM so that their memory traffic overlaps.
SPLIT_PROGRAMS_PER_SM = 2


@dataclass(frozen=True)
class AttentionTiles:
    """Tile shape and launch knobs of one attention kernel launch."""

    block_m: int  # rows of a query tile: tokens x query heads of one KV head, flattened
    block_n: int  # keys per KV tile
    num_warps: int
    num_stages: int

    def tokens_per_tile(self, group: int) -> int:
        """Query tokens covered by one tile when `group` query heads share a KV head."""
        return self.block_m // group


@dataclass(frozen=True)
class AttentionPlan:
    """What one paged-attention call launches."""

    kind: str  # "empty" (nothing to compute), "decode" (every q_len <= 1) or "unified" (any mix)
    tiles: AttentionTiles | None
    num_splits: int  # KV splits of the decode kernel; 1 for the other kinds


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def unified_tiles(head_dim: int, group: int, dtype: torch.dtype) -> AttentionTiles:
    """Tiles of the varlen kernel (prefill, chunked prefill, mixed batches).

    16-bit, D <= 128: 128 rows x 64 keys, 8 warps (two warp groups of 64 rows for wgmma), 3 stages.
    D = 256: 128 x 32 keys, 2 stages, to stay within registers. fp32 (a correctness dtype, not a fast one:
    exact fp32 products run on FMA units) gets 32 x 16. `python -m kernels.compile_report` shows the shared
    memory, registers and spills of each choice for sm_90: none of these spill.
    """
    if dtype == torch.float32:
        tiles = AttentionTiles(32, 16, 8, 2)
    elif next_power_of_2(head_dim) > 128:
        tiles = AttentionTiles(128, 32, 8, 2)
    else:
        tiles = AttentionTiles(128, 64, 8, 3)
    # At least one token per tile, however many query heads share a KV head.
    block_m = max(tiles.block_m, next_power_of_2(group))
    return AttentionTiles(block_m, tiles.block_n, tiles.num_warps, tiles.num_stages)


def decode_tiles(head_dim: int, group: int, dtype: torch.dtype) -> AttentionTiles:
    """Tiles of the decode kernel: one query token, its `group` heads as rows (>= 16 rows for tl.dot).

    Decode is bandwidth-bound: what matters is bytes in flight per SM. A 64-key K+V tile of D=128 is 32 KiB,
    prefetched one tile ahead, with two or more programs resident per SM (see choose_num_splits).
    """
    block_m = max(16, next_power_of_2(group))
    if dtype == torch.float32:
        return AttentionTiles(block_m, 32, 8, 2)
    if next_power_of_2(head_dim) > 128:
        return AttentionTiles(block_m, 32, 4, 2)
    return AttentionTiles(block_m, 64, 4, 3)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, block_n: int,
                      num_sms: int = DEFAULT_NUM_SMS) -> int:
    """KV splits for a decode step.

    Without splitting the grid has num_seqs * num_kv_heads programs; a small batch then leaves SMs idle while
    each program streams a long context alone. With fewer programs than SMs, split so that about
    SPLIT_PROGRAMS_PER_SM programs share each SM (their loads overlap), but never into splits of fewer than
    MIN_TILES_PER_SPLIT tiles, where the partial results and the reduce cost more than they save.
    """
    programs = max(1, num_seqs * num_kv_heads)
    if programs >= num_sms:
        return 1
    wanted = cdiv(SPLIT_PROGRAMS_PER_SM * num_sms, programs)
    worth_it = max(1, cdiv(max(max_seq_len, 0), block_n) // MIN_TILES_PER_SPLIT)
    return max(1, min(wanted, worth_it, MAX_NUM_SPLITS))


def plan_paged_attention(query: torch.Tensor, num_kv_heads: int, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                         max_query_len: int | None, max_seq_len: int | None, num_splits: int | None,
                         num_sms: int = DEFAULT_NUM_SMS) -> AttentionPlan:
    """Pick the kernel for one call. Reads tensor values (a device sync) only for hints left as None."""
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return AttentionPlan("empty", None, 1)
    group = num_heads // num_kv_heads
    if max_query_len is None:
        max_query_len = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max().item())
    if max_query_len > 1:
        return AttentionPlan("unified", unified_tiles(head_dim, group, query.dtype), 1)
    tiles = decode_tiles(head_dim, group, query.dtype)
    if num_splits is None:
        if max_seq_len is None:
            max_seq_len = int(seq_lens.max().item())
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_seq_len, tiles.block_n, num_sms)
    return AttentionPlan("decode", tiles, num_splits)
