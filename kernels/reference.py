"""Pure-torch references for every kernel: the oracle the tests trust.

Written for obviousness, not speed: one sequence at a time, its pages gathered into contiguous K/V, KV heads
repeated for GQA, an explicit causal mask with the position offset, softmax in fp32. Same signatures as the
kernels (the launch hints are accepted and ignored). Reads tensor values freely; never needs triton.
The element-wise references (RMSNorm, RoPE, SiLU-and-mul) are transformers' Llama formulas with torch's own
rounding to the activation dtype after each op, which the fused kernels reproduce.
The 8-bit KV cache (quantize_kv_ref / dequantize_kv_ref) is the format kernels.kv_quant implements and the
engine's CPU path uses: one fp32 scale per (token, KV head), int8 or fp8 codes.
The weight-only int4 GEMM (int4_matmul_ref) unpacks the codes, dequantizes in fp32 and multiplies in fp32.
"""

from __future__ import annotations

import torch


def paged_attention_ref(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                        block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                        scale: float, out: torch.Tensor | None = None, *, max_query_len: int | None = None,
                        max_seq_len: int | None = None, num_splits: int | None = None,
                        sliding_window: int | None = None, softcap: float | None = None,
                        k_scales: torch.Tensor | None = None, v_scales: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of each sequence's new query tokens over its whole paged context.

    Query token i of sequence s sits at position seq_lens[s] - q_len + i and sees keys 0..that position, or
    with `sliding_window` W only keys position - W + 1 .. position (pages wholly before the first query's window
    are never read: their table entries may name released blocks). `softcap` caps each score as
    softcap * tanh(score / softcap) before masking. A query that sees no key at all (only when seq_len is 0)
    gets a zero output. With k_scales / v_scales the caches hold 8-bit codes, read as dequantize_kv_ref(codes,
    scales, query.dtype).
    """
    if k_scales is not None:
        key_cache = dequantize_kv_ref(key_cache, k_scales, query.dtype)
        value_cache = dequantize_kv_ref(value_cache, v_scales, query.dtype)
    del max_query_len, max_seq_len, num_splits  # launch hints of the kernels; the reference needs none
    num_heads = query.shape[1]
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(query)
    cu = cu_seqlens_q.tolist()
    for s, seq_len in enumerate(seq_lens.tolist()):
        q_start, q_end = cu[s], cu[s + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        first_key = 0 if sliding_window is None else max(0, seq_len - q_len - sliding_window + 1)
        first_page, num_pages = first_key // block_size, -(-seq_len // block_size)
        pages = block_tables[s, first_page:num_pages].long()
        k_pos = torch.arange(first_page * block_size, seq_len, device=query.device)
        k = key_cache[pages].reshape(-1, num_kv_heads, key_cache.shape[3])[:len(k_pos)]  # [keys, KVH, D]
        v = value_cache[pages].reshape(-1, num_kv_heads, value_cache.shape[3])[:len(k_pos)]
        k = k.float().repeat_interleave(group, dim=1)  # [keys, H, D]
        v = v.float().repeat_interleave(group, dim=1)
        q = query[q_start:q_end].float()  # [q_len, H, D]

        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        q_pos = torch.arange(q_len, device=query.device) + (seq_len - q_len)
        visible = k_pos[None, :] <= q_pos[:, None]  # [q_len, keys]
        if sliding_window is not None:
            visible &= k_pos[None, :] > q_pos[:, None] - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs = torch.where(visible.any(dim=-1)[None, :, None], probs, 0.0)  # no visible key: 0, not NaN
        out[q_start:q_end] = torch.einsum("hqk,khd->qhd", probs, v).to(out.dtype)
    return out


def store_kv_ref(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, k_scales: torch.Tensor | None = None,
                 v_scales: torch.Tensor | None = None) -> None:
    """key[t] -> key_cache[slot // block_size, slot % block_size] (same for value); slot < 0 is skipped.
    With k_scales / v_scales: quantize_kv_ref's codes into the caches, its scales at the same (page, offset)."""
    block_size = key_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    pages, offsets = slots // block_size, slots % block_size
    if k_scales is None:
        key_cache[pages, offsets] = key[keep]
        value_cache[pages, offsets] = value[keep]
        return
    for x, cache, scales in ((key, key_cache, k_scales), (value, value_cache, v_scales)):
        codes, scale = quantize_kv_ref(x[keep], cache.dtype)
        cache.view(torch.uint8)[pages, offsets] = codes.view(torch.uint8)  # no fp8 indexing kernels on the CPU
        scales[pages, offsets] = scale


QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def quantize_kv_ref(x: torch.Tensor, code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (codes [..., D] of code_dtype, scales [...] fp32): per vector scale = max|x| / qmax (at
    least 1e-12 / qmax), code = x / scale rounded to nearest even (int8: clamped to +-127; fp8: torch's cast)."""
    qmax = QMAX[code_dtype]
    x32 = x.float()
    scale = x32.abs().amax(dim=-1).clamp_(min=1e-12) / qmax
    y = x32 / scale[..., None]
    if code_dtype == torch.int8:
        return torch.round(y).clamp_(-127, 127).to(torch.int8), scale
    return y.clamp_(-qmax, qmax).to(code_dtype), scale


def dequantize_kv_ref(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes [..., D], scales [...] -> codes * scales computed in fp32, rounded once to `dtype`."""
    return (codes.float() * scales[..., None]).to(dtype)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in fp32, cast to x's dtype, then multiply by the weight in that
    dtype. x [..., N]."""
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normed * weight).to(x.dtype)


def add_rms_norm_ref(residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """residual += delta (in place, in residual's dtype), then the RMSNorm of the sum."""
    residual += delta
    return rms_norm_ref(residual, weight, eps)


def rope_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate q [T, H, D] and k [T, KVH, D] in place, transformers' Llama (half-by-half) layout:
    x * cos_full + rotate_half(x) * sin_full with cos_full = [cos, cos], rotate_half(x) = [-x2, x1].
    cos, sin: [T, D/2] or [T, 1, D/2] in x's dtype."""
    cos = cos.reshape(cos.shape[0], 1, -1)
    sin = sin.reshape(sin.shape[0], 1, -1)
    for x in (q, k):
        x1, x2 = x[..., :x.shape[-1] // 2].clone(), x[..., x.shape[-1] // 2:].clone()
        x[..., :x.shape[-1] // 2] = x1 * cos - x2 * sin
        x[..., x.shape[-1] // 2:] = x2 * cos + x1 * sin


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] along the last dimension."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def unpack_int4_ref(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] -> int32 codes [N, K] in 0..15: byte j holds column 2j in its high nibble, 2j + 1 in its
    low nibble."""
    high, low = (qweight >> 4).to(torch.int32), (qweight & 15).to(torch.int32)
    return torch.stack([high, low], dim=-1).reshape(qweight.shape[0], -1)


def int4_matmul_ref(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """x [M, K] @ w^T with w[n, k] = (code[n, k] - 8) * scale[n, k // g] + zero[n, k // g] (scales_and_zeros
    [N, K / g, 2] holds (scale, zero) pairs), all in fp32, rounded once to x's dtype."""
    codes = unpack_int4_ref(qweight).float()
    n, k = codes.shape
    sz = scales_and_zeros.float()
    w = (codes.view(n, k // group_size, group_size) - 8.0) * sz[..., 0:1] + sz[..., 1:2]
    return (x.float() @ w.view(n, k).t()).to(x.dtype)
