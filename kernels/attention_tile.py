"""The inner loop both attention kernels share: attend one tile of rows to a range of KV tiles of the paged cache.

Rows are (query token, query head) pairs that read the same KV head. One step
  1. looks up the page of each of the BLOCK_N keys in the sequence's block-table row (one vector load,
     masked so entries past the sequence are never read),
  2. gathers K^T [D, BLOCK_N] and V [BLOCK_N, D] from the pages with int64 offsets,
  3. updates the online softmax: running row max `m` and row sum `l` in the log2 domain, fp32 accumulator.

Scores are kept in base 2 (`qk_scale` = scale * log2(e)) so the exponentials are exp2. A row that has seen
no visible key yet keeps m = -inf, l = 0, acc = 0: the exponentials are taken against 0 instead of -inf,
which keeps every value finite (exp2(-inf) = 0, never -inf - -inf).

Sliding windows: a row at q_pos sees keys q_pos - window + 1 .. q_pos (`window` is huge when there is none);
keys below `kv_lo` (the tile's oldest visible key) are neither looked up nor loaded, so table entries of
released blocks are never touched. Soft-capping (SOFTCAP): score' = cap * tanh(score / cap), computed in the
base-2 domain as c2 * tanh(qk / c2) with c2 = cap * log2(e), before the mask.

An 8-bit cache (KV_QUANT): the K and V tiles hold int8 / fp8 codes, and each key's fp32 scale sits at
(page, slot, head) of k_scale_ptr / v_scale_ptr ([num_blocks, block_size, KVH], strides stride_sb, stride_ss,
head offset `s_head_off`). The tile is dequantized in registers right after its load, code * scale in fp32
rounded once to the query's dtype (what kernels.reference computes), so the dot products and the online
softmax run unchanged; only half (vs 16-bit) or a quarter (vs fp32) of the K/V bytes plus 4 bytes per key and
head cross the memory bus.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_kv_tile(acc, m_i, l_i, q, tile_start, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                   k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                   q_pos, kv_len, qk_scale, offs_d, d_ok, kv_lo, window, softcap_log2,
                   k_scale_ptr, v_scale_ptr, s_head_off, stride_sb, stride_ss,
                   BLOCK_N: tl.constexpr, PAGE: tl.constexpr, MASKED: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, SOFTCAP: tl.constexpr, KV_QUANT: tl.constexpr):
    """One online-softmax step over keys [tile_start, tile_start + BLOCK_N).

    MASKED=False promises that every key of the tile exists (kv_lo <= key < kv_len) and is visible to every
    row that matters (q_pos - window < key <= q_pos), so neither the bounds nor the masks are applied.
    """
    offs_n = tile_start + tl.arange(0, BLOCK_N)
    if MASKED:
        n_ok = (offs_n < kv_len) & (offs_n >= kv_lo)
        page = tl.load(bt_row_ptr + offs_n // PAGE, mask=n_ok, other=0)
    else:
        page = tl.load(bt_row_ptr + offs_n // PAGE)
    page = page.to(tl.int64)
    slot = (offs_n % PAGE).to(tl.int64)
    k_off = page * stride_kb + slot * stride_ks + k_head_off
    v_off = page * stride_vb + slot * stride_vs + v_head_off
    if MASKED:
        k = tl.load(k_cache_ptr + k_off[None, :] + offs_d[:, None], mask=d_ok[:, None] & n_ok[None, :], other=0.0)
    else:
        k = tl.load(k_cache_ptr + k_off[None, :] + offs_d[:, None], mask=d_ok[:, None], other=0.0)
    if KV_QUANT:
        s_off = page * stride_sb + slot * stride_ss + s_head_off
        if MASKED:
            k_scale = tl.load(k_scale_ptr + s_off, mask=n_ok, other=0.0)
        else:
            k_scale = tl.load(k_scale_ptr + s_off)
        k = (k.to(tl.float32) * k_scale[None, :]).to(q.dtype)

    qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
    if SOFTCAP:
        # tanh(x) = 1 - 2 / (exp(2x) + 1), with 2x log2(e) clamped below 126 (tanh is 1 in fp32 long before)
        t = tl.minimum(qk / softcap_log2 * 2.8853900817779268, 126.0)
        qk = softcap_log2 * (1.0 - 2.0 / (tl.math.exp2(t) + 1.0))
    if MASKED:
        # Keys past kv_len sit right of every valid row's position, so the causal test also drops them; keys
        # below kv_lo sit left of every row's window, so the window test drops them.
        visible = (offs_n[None, :] <= q_pos[:, None]) & (offs_n[None, :] > q_pos[:, None] - window)
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)

    if MASKED:
        v = tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        v = tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=d_ok[None, :], other=0.0)
    if KV_QUANT:
        if MASKED:
            v_scale = tl.load(v_scale_ptr + s_off, mask=n_ok, other=0.0)
        else:
            v_scale = tl.load(v_scale_ptr + s_off)
        v = (v.to(tl.float32) * v_scale[:, None]).to(q.dtype)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def attend_kv_range(acc, m_i, l_i, q, tile_begin, full_begin, full_end, tile_end, bt_row_ptr, k_cache_ptr,
                    v_cache_ptr, k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                    q_pos, kv_len, qk_scale, offs_d, d_ok, kv_lo, window, softcap_log2,
                    k_scale_ptr, v_scale_ptr, s_head_off, stride_sb, stride_ss,
                    BLOCK_N: tl.constexpr, PAGE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    SOFTCAP: tl.constexpr, KV_QUANT: tl.constexpr):
    """KV tiles [tile_begin, tile_end): [full_begin, full_end) unmasked (every key exists and every row that
    matters sees it), the tiles before (the window's edge) and after (the causal edge) with the masks. Without
    a window full_begin == tile_begin. Separate loops, so the common unmasked tiles carry no mask arithmetic
    and each loop is software-pipelined on its own."""
    for j in range(tile_begin, full_begin):
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, j * BLOCK_N, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                                       k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                                       q_pos, kv_len, qk_scale, offs_d, d_ok, kv_lo, window, softcap_log2,
                                       k_scale_ptr, v_scale_ptr, s_head_off, stride_sb, stride_ss,
                                       BLOCK_N, PAGE, True, DOT_PRECISION, SOFTCAP, KV_QUANT)
    for j in range(full_begin, full_end):
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, j * BLOCK_N, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                                       k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                                       q_pos, kv_len, qk_scale, offs_d, d_ok, kv_lo, window, softcap_log2,
                                       k_scale_ptr, v_scale_ptr, s_head_off, stride_sb, stride_ss,
                                       BLOCK_N, PAGE, False, DOT_PRECISION, SOFTCAP, KV_QUANT)
    for j in range(full_end, tile_end):
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, j * BLOCK_N, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                                       k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                                       q_pos, kv_len, qk_scale, offs_d, d_ok, kv_lo, window, softcap_log2,
                                       k_scale_ptr, v_scale_ptr, s_head_off, stride_sb, stride_ss,
                                       BLOCK_N, PAGE, True, DOT_PRECISION, SOFTCAP, KV_QUANT)
    return acc, m_i, l_i
