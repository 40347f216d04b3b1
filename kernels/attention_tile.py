"""The inner loop both attention kernels share: attend one tile of rows to a range of KV tiles of the paged cache.

Rows are (query token, query head) pairs that read the same KV head. One step
  1. looks up the page of each of the BLOCK_N keys in the sequence's block-table row (one vector load,
     masked so entries past the sequence are never read),
  2. gathers K^T [D, BLOCK_N] and V [BLOCK_N, D] from the pages with int64 offsets,
  3. updates the online softmax: running row max `m` and row sum `l` in the log2 domain, fp32 accumulator.

Scores are kept in base 2 (`qk_scale` = scale * log2(e)) so the exponentials are exp2. A row that has seen
no visible key yet keeps m = -inf, l = 0, acc = 0: the exponentials are taken against 0 instead of -inf,
which keeps every value finite (exp2(-inf) = 0, never -inf - -inf).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_kv_tile(acc, m_i, l_i, q, tile_start, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                   k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                   q_pos, kv_len, qk_scale, offs_d, d_ok,
                   BLOCK_N: tl.constexpr, PAGE: tl.constexpr, MASKED: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """One online-softmax step over keys [tile_start, tile_start + BLOCK_N).

    MASKED=False promises that every key of the tile exists (< kv_len) and is visible to every row that
    matters (key <= q_pos), so neither the bounds nor the causal mask is applied.
    """
    offs_n = tile_start + tl.arange(0, BLOCK_N)
    if MASKED:
        n_ok = offs_n < kv_len
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

    qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        # Keys past kv_len sit right of every valid row's position, so the causal test also drops them.
        qk = tl.where(offs_n[None, :] <= q_pos[:, None], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)

    if MASKED:
        v = tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        v = tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=d_ok[None, :], other=0.0)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def attend_kv_range(acc, m_i, l_i, q, tile_begin, full_end, tile_end, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                    k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                    q_pos, kv_len, qk_scale, offs_d, d_ok,
                    BLOCK_N: tl.constexpr, PAGE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """KV tiles [tile_begin, tile_end): those before full_end unmasked (every key exists and every row that
    matters sees it), the rest with the bounds and causal masks. Two loops, so the common unmasked tiles
    carry no mask arithmetic and each loop is software-pipelined on its own."""
    for j in range(tile_begin, full_end):
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, j * BLOCK_N, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                                       k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                                       q_pos, kv_len, qk_scale, offs_d, d_ok, BLOCK_N, PAGE, False, DOT_PRECISION)
    for j in range(full_end, tile_end):
        acc, m_i, l_i = attend_kv_tile(acc, m_i, l_i, q, j * BLOCK_N, bt_row_ptr, k_cache_ptr, v_cache_ptr,
                                       k_head_off, v_head_off, stride_kb, stride_ks, stride_vb, stride_vs,
                                       q_pos, kv_len, qk_scale, offs_d, d_ok, BLOCK_N, PAGE, True, DOT_PRECISION)
    return acc, m_i, l_i
