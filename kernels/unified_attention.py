"""Varlen paged attention for any mix of decode, prefill, chunked prefill and prefix-hit sequences.

Grid: (query tiles, KV heads). A query tile covers up to BLOCK_Q consecutive query tokens of ONE sequence and
all GROUP = H / KVH query heads that read the program's KV head, flattened to BLOCK_M = BLOCK_Q * GROUP rows
(row r is token r // GROUP, head r % GROUP), so tl.dot sees >= 16 rows even for decode tokens.

Program id -> (sequence, tile) without host metadata: sequence s owns the ids starting at
    first_tile(s) = cu_seqlens_q[s] // BLOCK_Q + s,
which leaves each sequence at least ceil(q_len / BLOCK_Q) ids (the "+ s" pays for its partial tile), so
T // BLOCK_Q + S programs cover every batch whose flattened length is T. A program finds its sequence by
counting the sequences whose first_tile is <= its id, and exits when its tile starts past that sequence's q_len.

    sequence s:  |<------------- seq_len --------------->|
                 |<--- ctx = seq_len - q_len --->|<q_len>|   query token i sits at position ctx + i
    tile rows at positions [p0, p1] attend to keys [0, p1]: keys <= p0 need no mask (unmasked loop),
    keys in (p0, p1] get the causal mask (masked loop); keys past p1 are never loaded.

With a sliding window W the rows attend to keys [p0 - W + 1, p1] only: KV tiles before the one holding
p0 - W + 1 are skipped, and keys below p1 - W + 1 (some row's window starts later) get the masked step too:

    keys:  | skipped |  masked (window edge)  |  unmasked  |  masked (causal edge)  |
           0     p0 - W + 1             p1 - W + 1      p0                      p1
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention_tile import attend_kv_range
from kernels.launch import Launch
from kernels.planning import AttentionTiles, next_power_of_2

SEQ_CHUNK = 128  # sequences examined per vector load when mapping a tile to its sequence


# num_seqs and the block-table width change from step to step, and the index tensors may be slices of one
# packed buffer at batch-dependent offsets: none of them may pick a compiled variant (kernels.specialization).
@triton.jit(do_not_specialize=["num_seqs", "stride_bt"],
            do_not_specialize_on_alignment=["block_tables_ptr", "cu_seqlens_q_ptr", "seq_lens_ptr"])
def _unified_attention_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr,
    qk_scale, num_seqs,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    window, softcap_log2, k_scale_ptr, v_scale_ptr, stride_sb, stride_ss,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, SEQ_CHUNK: tl.constexpr, SOFTCAP: tl.constexpr = False,
    KV_QUANT: tl.constexpr = False,
):
    # Highest tile ids first: the last tiles of a sequence see the most keys, so start them early (less tail).
    tile_id = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)

    # first_tile is strictly increasing in s, so this tile's sequence is (number of s with
    # first_tile(s) <= tile_id) - 1: counted SEQ_CHUNK sequences per vector load, one load for most batches.
    seq = tile_id * 0 - 1
    for chunk in range(0, tl.cdiv(num_seqs, SEQ_CHUNK)):
        offs_s = chunk * SEQ_CHUNK + tl.arange(0, SEQ_CHUNK)
        s_ok = offs_s < num_seqs
        first = tl.load(cu_seqlens_q_ptr + offs_s, mask=s_ok, other=0) // BLOCK_Q + offs_s
        seq += tl.sum((s_ok & (first <= tile_id)).to(tl.int32), 0)

    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    local_tile = tile_id - (q_start // BLOCK_Q + seq)
    if local_tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM
    tok = local_tile * BLOCK_Q + offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    row_ok = (offs_m // GROUP < BLOCK_Q) & (tok < q_len)
    q_pos = ctx_len + tok

    q_row = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + q_row[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    # Positions of the first and last valid rows; keys 0..last_pos are all this tile ever needs.
    first_pos = ctx_len + local_tile * BLOCK_Q
    last_pos = tl.minimum(first_pos + BLOCK_Q, seq_len) - 1
    kv_len = tl.maximum(last_pos + 1, 0)
    num_full = tl.maximum(first_pos + 1, 0) // BLOCK_N
    num_tiles = tl.cdiv(kv_len, BLOCK_N)
    # The window: the first row reads from kv_lo on; tiles from full_lo on lie in every row's window.
    kv_lo = tl.maximum(first_pos - window + 1, 0)
    first_tile = kv_lo // BLOCK_N
    full_lo = tl.cdiv(tl.maximum(last_pos - window + 1, 0), BLOCK_N)

    bt_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head_off = kv_head.to(tl.int64) * stride_kh
    v_head_off = kv_head.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    # masked [first_tile, full_begin), unmasked [full_begin, full_end), masked [full_end, num_tiles)
    full_begin = tl.minimum(full_lo, num_tiles)
    full_end = tl.maximum(num_full, full_begin)
    acc, m_i, l_i = attend_kv_range(acc, m_i, l_i, q, first_tile, full_begin, full_end, num_tiles, bt_row_ptr,
                                    k_cache_ptr, v_cache_ptr, k_head_off, v_head_off, stride_kb, stride_ks,
                                    stride_vb, stride_vs, q_pos, kv_len, qk_scale, offs_d, d_ok, kv_lo, window,
                                    softcap_log2, k_scale_ptr, v_scale_ptr, kv_head.to(tl.int64), stride_sb, stride_ss,
                                    BLOCK_N, PAGE, DOT_PRECISION, SOFTCAP, KV_QUANT)

    # A row with no visible key (only possible for a misused position < 0) is written as zeros, not NaN.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    tl.store(out_ptr + q_row[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tf32 would lose ~3 digits); 16-bit inputs ignore this."""
    return "ieee" if dtype == torch.float32 else "tf32"


def unified_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                      scale: float, out: torch.Tensor, tiles: AttentionTiles, sliding_window: int | None = None,
                      softcap: float | None = None, k_scales: torch.Tensor | None = None,
                      v_scales: torch.Tensor | None = None) -> None:
    """Launch the varlen kernel. Arguments are already validated; the grid depends on shapes only."""
    unified_attention_launch(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, out,
                             tiles, sliding_window, softcap, k_scales, v_scales).run()


def unified_attention_launch(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                             block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                             scale: float, out: torch.Tensor, tiles: AttentionTiles,
                             sliding_window: int | None = None, softcap: float | None = None,
                             k_scales: torch.Tensor | None = None, v_scales: torch.Tensor | None = None) -> Launch:
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    block_q = tiles.tokens_per_tile(group)
    assert block_q >= 1, "tiles.block_m must hold every query head of one KV head"
    args = (out, query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens,
            scale * 1.4426950408889634, num_seqs,
            query.stride(0), query.stride(1), out.stride(0), out.stride(1),
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(2), block_tables.stride(0),
            *window_args(sliding_window, softcap), *scale_args(key_cache, value_cache, k_scales, v_scales))
    kwargs = dict(launch_constants(head_dim, group, key_cache.shape[1], query.dtype, tiles, softcap is not None,
                                   k_scales is not None),
                  num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    return Launch(_unified_attention_kernel, (num_tokens // block_q + num_seqs, num_kv_heads), args, kwargs)


NO_WINDOW = 1 << 30  # "window" of a layer without one: larger than any position, so the window test always passes


def window_args(sliding_window: int | None, softcap: float | None) -> tuple[int, float]:
    """The kernels' runtime (window, softcap_log2) arguments; softcap_log2 is unused when SOFTCAP is False."""
    return (NO_WINDOW if sliding_window is None else int(sliding_window),
            1.0 if softcap is None else float(softcap) * 1.4426950408889634)


def scale_args(key_cache: torch.Tensor, value_cache: torch.Tensor, k_scales: torch.Tensor | None,
               v_scales: torch.Tensor | None) -> tuple:
    """The kernels' (k_scale_ptr, v_scale_ptr, stride_sb, stride_ss) arguments. Without an 8-bit cache the
    pointers are never read: the caches stand in, so the argument types stay fixed."""
    if k_scales is None:
        return key_cache, value_cache, 0, 0
    return k_scales, v_scales, k_scales.stride(0), k_scales.stride(1)


def launch_constants(head_dim: int, group: int, block_size: int, dtype: torch.dtype, tiles: AttentionTiles,
                     softcap: bool = False, kv_quant: bool = False) -> dict:
    """The kernel's constexpr arguments for one configuration (shared with kernels.compile_report)."""
    return dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, next_power_of_2(head_dim)), GROUP=group,
                BLOCK_M=tiles.block_m, BLOCK_Q=tiles.tokens_per_tile(group), BLOCK_N=tiles.block_n, PAGE=block_size,
                DOT_PRECISION=dot_precision(dtype), SEQ_CHUNK=SEQ_CHUNK, SOFTCAP=softcap, KV_QUANT=kv_quant)
