"""Split-KV (flash-decoding) paged attention for batches where every sequence has at most one query token.

Grid: (sequences, KV heads, num_splits), fixed by shapes and the split count alone, so a decode step can be
captured in a CUDA graph and replayed for any context lengths. The split count is a runtime value (the grid's
third dimension), not a compile-time one: changing it between steps compiles nothing new. The rows of a program are the GROUP query heads
of its KV head (padded to >= 16 rows for tl.dot).

Each program works out its own key range from seq_lens on the device:
    tiles = ceil(seq_len / BLOCK_N),  per_split = ceil(tiles / num_splits),
    split j streams tiles [j * per_split, min((j + 1) * per_split, tiles)),
which is empty for the last splits of a short sequence.

num_splits == 1 (SPLIT=False): the program normalizes and writes the output itself.
num_splits > 1 (SPLIT=True): it writes a normalized partial output o_j and its log-sum-exp lse_j (base 2; -inf and o_j = 0
for an empty split), and the reduce kernel combines them per (sequence, head):
    out = sum_j 2^(lse_j - M) o_j / sum_j 2^(lse_j - M),   M = max_j lse_j,
where empty splits get weight 0 and a sequence with no keys at all (seq_len 0, e.g. CUDA-graph padding)
gets zeros.

With a sliding window W the query at seq_len - 1 reads keys from kv_lo = seq_len - W on: the splits share the
tiles from the one holding kv_lo, and the first of them gets the window mask (see kernels.attention_tile).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention_tile import attend_kv_range
from kernels.launch import Launch
from kernels.planning import AttentionTiles, next_power_of_2
from kernels.unified_attention import dot_precision, scale_args, window_args


# The block-table width and the index tensors' offsets in a packed buffer change from step to step.
@triton.jit(do_not_specialize=["stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "cu_seqlens_q_ptr", "seq_lens_ptr"])
def _decode_kernel(
    out_ptr, part_out_ptr, part_lse_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr,
    cu_seqlens_q_ptr, seq_lens_ptr, qk_scale,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    window, softcap_log2, k_scale_ptr, v_scale_ptr, stride_sb, stride_ss,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, SOFTCAP: tl.constexpr = False, KV_QUANT: tl.constexpr = False,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)

    q_start = tl.load(cu_seqlens_q_ptr + seq)
    if tl.load(cu_seqlens_q_ptr + seq + 1) == q_start:
        return  # no query token: nothing to write (the reduce kernel skips it too)
    seq_len = tl.load(seq_lens_ptr + seq)
    num_tiles = tl.cdiv(seq_len, BLOCK_N)
    kv_lo = tl.maximum(seq_len - window, 0)  # the oldest key the query at seq_len - 1 reads
    first_tile = kv_lo // BLOCK_N
    per_split = tl.cdiv(num_tiles - first_tile, num_splits)
    tile_begin = first_tile + split * per_split
    tile_end = tl.minimum(tile_begin + per_split, num_tiles)
    # Tiles wholly inside [kv_lo, seq_len) hold only existing keys, all visible to the single query.
    full_begin = tl.minimum(tl.maximum(tl.cdiv(kv_lo, BLOCK_N), tile_begin), tl.maximum(tile_end, tile_begin))
    full_end = tl.maximum(tl.minimum(tile_end, seq_len // BLOCK_N), full_begin)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    head = kv_head * GROUP + offs_m
    row_ok = offs_m < GROUP
    q_row = q_start.to(tl.int64)
    q = tl.load(q_ptr + q_row * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q_pos = tl.zeros([BLOCK_M], tl.int32) + (seq_len - 1)

    bt_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head_off = kv_head.to(tl.int64) * stride_kh
    v_head_off = kv_head.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    acc, m_i, l_i = attend_kv_range(acc, m_i, l_i, q, tile_begin, full_begin, full_end, tile_end, bt_row_ptr,
                                    k_cache_ptr, v_cache_ptr, k_head_off, v_head_off, stride_kb, stride_ks,
                                    stride_vb, stride_vs, q_pos, seq_len, qk_scale, offs_d, d_ok, kv_lo, window,
                                    softcap_log2, k_scale_ptr, v_scale_ptr, kv_head.to(tl.int64), stride_sb, stride_ss,
                                    BLOCK_N, PAGE, DOT_PRECISION, SOFTCAP, KV_QUANT)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if not SPLIT:
        tl.store(out_ptr + q_row * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:
        lse = m_i + tl.math.log2(l_safe)  # an empty split keeps m_i = -inf, l_i = 0: lse = -inf, o = 0
        # Partials are [S, H, num_splits, HEAD_DIM] and [S, H, num_splits], contiguous fp32.
        part = (seq.to(tl.int64) * NUM_HEADS + head) * num_splits + split
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], o,
                 mask=row_ok[:, None] & d_ok[None, :])
        tl.store(part_lse_ptr + part, lse, mask=row_ok)


@triton.jit(do_not_specialize=["num_splits"], do_not_specialize_on_alignment=["cu_seqlens_q_ptr"])
def _reduce_splits_kernel(
    out_ptr, part_out_ptr, part_lse_ptr, cu_seqlens_q_ptr, num_splits, stride_ot, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    if tl.load(cu_seqlens_q_ptr + seq + 1) == q_start:
        return
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    s_ok = offs_s < num_splits
    d_ok = offs_d < HEAD_DIM
    part = (seq.to(tl.int64) * NUM_HEADS + head) * num_splits + offs_s
    lse = tl.load(part_lse_ptr + part, mask=s_ok, other=float("-inf"))
    lse_max = tl.max(lse, 0)
    lse_ref = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    weight = tl.math.exp2(lse - lse_ref)  # 0 for empty splits
    o = tl.load(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :],
                other=0.0)
    total = tl.sum(weight, 0)
    res = tl.sum(o * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + q_start.to(tl.int64) * stride_ot + head * stride_oh + offs_d,
             res.to(out_ptr.dtype.element_ty), mask=d_ok)


def decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                     block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                     scale: float, out: torch.Tensor, tiles: AttentionTiles, num_splits: int,
                     sliding_window: int | None = None, softcap: float | None = None,
                     k_scales: torch.Tensor | None = None, v_scales: torch.Tensor | None = None) -> None:
    """Launch the decode kernel (and the reduce when num_splits > 1). Arguments are already validated."""
    for launch in decode_launches(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, out,
                                  tiles, num_splits, sliding_window, softcap, k_scales, v_scales):
        launch.run()


def decode_launches(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                    scale: float, out: torch.Tensor, tiles: AttentionTiles, num_splits: int,
                    sliding_window: int | None = None, softcap: float | None = None,
                    k_scales: torch.Tensor | None = None, v_scales: torch.Tensor | None = None) -> list[Launch]:
    """The decode launch, then the reduce launch when num_splits > 1 (allocates the split partials)."""
    _, num_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    assert tiles.block_m >= group, "decode rows must hold every query head of one KV head"
    if num_splits > 1:
        part_out = torch.empty((num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32,
                               device=query.device)
        part_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device)
    else:
        part_out = part_lse = out  # unused by the kernel when SPLIT is False
    args = (out, part_out, part_lse, query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens,
            scale * 1.4426950408889634,
            query.stride(0), query.stride(1), out.stride(0), out.stride(1),
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(2), block_tables.stride(0),
            *window_args(sliding_window, softcap), *scale_args(key_cache, value_cache, k_scales, v_scales))
    kwargs = dict(launch_constants(num_heads, head_dim, group, key_cache.shape[1], query.dtype, tiles, num_splits,
                                   softcap is not None, k_scales is not None),
                  num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    launches = [Launch(_decode_kernel, (num_seqs, num_kv_heads, num_splits), args, kwargs)]
    if num_splits > 1:
        launches.append(Launch(_reduce_splits_kernel, (num_seqs, num_heads),
                               (out, part_out, part_lse, cu_seqlens_q, num_splits, out.stride(0), out.stride(1)),
                               dict(reduce_constants(num_heads, head_dim, num_splits), num_warps=4)))
    return launches


def launch_constants(num_heads: int, head_dim: int, group: int, block_size: int, dtype: torch.dtype,
                     tiles: AttentionTiles, num_splits: int, softcap: bool = False, kv_quant: bool = False) -> dict:
    """The decode kernel's constexpr arguments (shared with kernels.compile_report)."""
    return dict(NUM_HEADS=num_heads, HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, next_power_of_2(head_dim)), GROUP=group,
                BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, PAGE=block_size, SPLIT=num_splits > 1,
                DOT_PRECISION=dot_precision(dtype), SOFTCAP=softcap, KV_QUANT=kv_quant)


def reduce_constants(num_heads: int, head_dim: int, num_splits: int) -> dict:
    return dict(NUM_HEADS=num_heads, HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, next_power_of_2(head_dim)),
                SPLITS_PAD=next_power_of_2(num_splits))
