"""Triton kernels for the paged KV cache (attention over pages, storing new keys/values into pages) and fused
element-wise kernels for the model (RMSNorm with the residual add, RoPE, SiLU-and-mul).

Public API (the engine codes against these):
    paged_attention(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, out=None,
                    *, max_query_len=None, max_seq_len=None, num_splits=None, sliding_window=None,
                    softcap=None, k_scales=None, v_scales=None) -> out
    store_kv(key, value, key_cache, value_cache, slot_mapping, k_scales=None, v_scales=None) -> None
        with k_scales / v_scales the cache is 8-bit (int8, fp8 e4m3 / e5m2 codes, one fp32 scale per token and
        KV head beside them): store_kv quantizes, paged_attention dequantizes inside the kernel (kernels.kv_quant)
    fused_moe(x, gate_up, down, topk_weights, topk_ids) -> out
        a sparse MoE MLP: tokens sorted by expert, one grouped GEMM per projection (kernels.fused_moe)
    int4_mm(x, qweight, scales_and_zeros, group_size) -> y
        weight-only int4 GEMM for few rows (decode): codes two a byte, (scale, zero) per channel and group of
        input columns, dequantized in registers (kernels.int4_matmul)
    decode_num_splits(num_seqs, num_heads, num_kv_heads, head_dim, max_seq_len, dtype, device=None) -> int
        the split count paged_attention would choose for a decode batch (to fix one for CUDA graphs)
    rms_norm(x, weight, eps, out=None) -> out
    add_rms_norm(residual, delta, weight, eps, out=None) -> out      (residual += delta in place first)
    rope_(q, k, cos, sin) -> None                                     (rotates q and k in place)
    silu_and_mul(gate_up, out=None) -> out
        fused element-wise kernels for the model's work outside attention (one launch, one pass each)

Triton is imported on first launch only, so `import kernels` and `kernels.reference` work without it.
Module map: planning (path, tiles, splits; no triton), validation (argument checks), unified_attention
(varlen kernel), decode_attention (split-KV decode + reduce), attention_tile (their shared inner loop),
kv_store (store kernel), kv_quant (the 8-bit cache formats inside the kernels), norm / rotary / activation (the element-wise kernels), launch (a launch as data),
reference (pure-torch oracle), batch (random paged batches), bench and bench_elementwise (GPU benchmark),
compile_report (sm_90 ahead-of-time compile report) and specialization (compiled variants per launch; both
need no GPU); moe_kernel (the fused MoE kernel, its expert sort and launch), moe_reference (its pure-torch
oracle), moe_validation (its argument checks); int4_matmul (the weight-only int4 GEMM, its tiles and
launch).
"""

from __future__ import annotations

import functools
import os

import torch

from kernels.planning import DEFAULT_NUM_SMS, choose_num_splits, decode_tiles, plan_paged_attention
from kernels.validation import (check_int4_matmul_args, check_paged_attention_args, check_rms_norm_args,
                                check_rope_args, check_silu_and_mul_args, check_store_kv_args,
                                check_window_and_softcap)

__all__ = ["paged_attention", "store_kv", "decode_num_splits", "fused_moe", "int4_mm", "rms_norm",
           "add_rms_norm", "rope_", "silu_and_mul"]


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor,
                    scale: float, out: torch.Tensor | None = None, *, max_query_len: int | None = None,
                    max_seq_len: int | None = None, num_splits: int | None = None,
                    sliding_window: int | None = None, softcap: float | None = None,
                    k_scales: torch.Tensor | None = None, v_scales: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of a flattened batch of new query tokens over each sequence's paged KV cache.

    query [T, H, D]; key_cache, value_cache [num_blocks, block_size, KVH, D] (H a multiple of KVH);
    block_tables [S, max_blocks] int32; cu_seqlens_q [S + 1] int32; seq_lens [S] int32, each sequence's
    context length including its new tokens. Query token i of sequence s sits at position
    seq_lens[s] - q_len_s + i and sees keys 0..that position. Returns out [T, H, D] in query's dtype.

    sliding_window W: query position p sees only keys p - W + 1 .. p, and block-table entries of pages wholly
    before the first query's window are never read (they may name released blocks). softcap c: each score s
    becomes c * tanh(s / c) before masking (Gemma 2).

    8-bit cache: key_cache / value_cache hold int8 or fp8 (e4m3fn, e5m2) codes and k_scales / v_scales
    [num_blocks, block_size, KVH] fp32 their scales (as store_kv writes them); each key and value is read as
    code * scale, rounded to query's dtype.

    Hints: with max_query_len given (and max_seq_len or num_splits when max_query_len <= 1) nothing here
    synchronizes with the device. num_splits only affects decode batches (every q_len <= 1).
    """
    check_paged_attention_args(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, out,
                               max_query_len, max_seq_len, num_splits, k_scales, v_scales)
    check_window_and_softcap(sliding_window, softcap)
    _check_runnable("query", query.device, query.dtype)
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if sliding_window is not None and max_seq_len is not None:
        max_seq_len = min(max_seq_len, sliding_window)  # the most keys a decode query reads: what splits share
    plan = plan_paged_attention(query, key_cache.shape[2], cu_seqlens_q, seq_lens, max_query_len, max_seq_len,
                                num_splits, _num_sms(query.device))
    if plan.kind == "decode":
        from kernels.decode_attention import decode_attention

        decode_attention(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, float(scale), out,
                         plan.tiles, plan.num_splits, sliding_window, softcap, k_scales, v_scales)
    elif plan.kind == "unified":
        from kernels.unified_attention import unified_attention

        unified_attention(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, float(scale), out,
                          plan.tiles, sliding_window, softcap, k_scales, v_scales)
    return out


def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor, k_scales: torch.Tensor | None = None,
             v_scales: torch.Tensor | None = None) -> None:
    """Write key[t] / value[t] ([T, KVH, D]) into slot slot_mapping[t] of the paged caches; slot -1 skips t.

    slot = block_id * block_size + offset, i.e. key_cache.view(-1, KVH, D)[slot] for a contiguous cache.
    With k_scales / v_scales ([num_blocks, block_size, KVH] fp32) the caches are 8-bit (int8, fp8 e4m3fn /
    e5m2): each token's head is stored as codes plus one scale (kernels.reference.quantize_kv_ref, bit for bit).
    """
    check_store_kv_args(key, value, key_cache, value_cache, slot_mapping, k_scales, v_scales)
    _check_runnable("key", key.device, key.dtype)
    from kernels.kv_store import store_kv as launch_store_kv

    launch_store_kv(key, value, key_cache, value_cache, slot_mapping, k_scales, v_scales)


def fused_moe(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """sum over k of topk_weights[t, k] * down[e] @ silu_and_mul(gate_up[e] @ x[t]), e = topk_ids[t, k].

    x [T, H]; gate_up [E, 2I, H] (each expert's gate rows, then its up rows); down [E, H, I]; topk_weights [T, k]
    (any float dtype; applied in fp32); topk_ids [T, k] integer expert ids. Returns [T, H] in x's dtype.
    """
    from kernels.moe_validation import check_fused_moe_args

    check_fused_moe_args(x, gate_up, down, topk_weights, topk_ids)
    _check_runnable("x", x.device, x.dtype)
    from kernels.moe_kernel import fused_moe as launch_fused_moe

    return launch_fused_moe(x, gate_up, down, topk_weights, topk_ids)


def int4_mm(x: torch.Tensor, qweight: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """y [M, N] = x [M, K] @ w^T in x's dtype, w[n, k] = (code - 8) * scale + zero for the (scale, zero) pair
    scales_and_zeros[n, k // group_size]; qweight uint8 [N, K / 2] holds code[n, 2j] in byte j's high nibble
    and code[n, 2j + 1] in its low nibble. Accumulates in fp32 (the weights rounded to x's dtype first).
    Meant for few rows (decode, up to ~64): a prefill batch is better served by dequantizing once and a dense
    GEMM. Reads no device value on the host. (Not named int4_matmul: that is the kernel's module.)"""
    check_int4_matmul_args(x, qweight, scales_and_zeros, group_size)
    _check_runnable("x", x.device, x.dtype)
    from kernels.int4_matmul import int4_matmul as launch_int4_matmul

    return launch_int4_matmul(x, qweight, scales_and_zeros, group_size, _num_sms(x.device))


def decode_num_splits(num_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int, max_seq_len: int,
                      dtype: torch.dtype, device: torch.device | str | None = None) -> int:
    """The split count paged_attention picks for a decode batch of this shape on `device`.

    A CUDA-graph caller captures with a fixed num_splits: pass what this returns for the graph's batch size
    and the longest context it will replay (e.g. max_model_len).
    """
    tiles = decode_tiles(head_dim, num_heads // num_kv_heads, dtype)
    num_sms = _num_sms(torch.device(device)) if device is not None else DEFAULT_NUM_SMS
    return choose_num_splits(num_seqs, num_kv_heads, max_seq_len, tiles.block_n, num_sms)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of each row of x ([R, N], or [R, H, N] for per-head norms; rows may be strided) times weight [N].
    Returns out (a new tensor of x's shape and dtype unless given)."""
    check_rms_norm_args(x, weight, eps, None, out)
    return _rms_norm(x, weight, eps, out, None)


def add_rms_norm(residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """residual += delta in place (rounded to residual's dtype), then RMSNorm of the new residual, in one pass."""
    check_rms_norm_args(residual, weight, eps, delta, out)
    return _rms_norm(residual, weight, eps, out, delta)


def _rms_norm(x, weight, eps, out, delta) -> torch.Tensor:
    _check_runnable("x", x.device, x.dtype)
    from kernels.norm import rms_norm_launch

    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        rms_norm_launch(x, weight, float(eps), out, delta).run()
    return out


def rope_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotary embedding of q [T, H, D] and k [T, KVH, D] in place (half-by-half layout), with cos, sin
    [T, D/2] or [T, 1, D/2] in q's dtype: bit-identical to transformers' torch formula."""
    check_rope_args(q, k, cos, sin)
    _check_runnable("q", q.device, q.dtype)
    from kernels.rotary import rope_launch

    if q.shape[0]:
        rope_launch(q, k, cos, sin).run()


def silu_and_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] ([T, 2I] -> [T, I])."""
    check_silu_and_mul_args(gate_up, out)
    _check_runnable("gate_up", gate_up.device, gate_up.dtype)
    from kernels.activation import silu_and_mul_launch

    if out is None:
        out = torch.empty((gate_up.shape[0], gate_up.shape[1] // 2), dtype=gate_up.dtype, device=gate_up.device)
    if out.numel():
        silu_and_mul_launch(gate_up, out).run()
    return out


def _check_runnable(name: str, device: torch.device, dtype: torch.dtype) -> None:
    if device.type == "cuda":
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{name}: on {device}, but the Triton kernels need a CUDA device (or TRITON_INTERPRET=1, "
                         "the slow interpreter); use kernels.reference on the CPU")
    if dtype == torch.bfloat16:
        # The interpreter computes garbage for bf16 (it has no bf16 arithmetic); refuse rather than mislead.
        raise ValueError(f"{name}: bfloat16 is not supported by the Triton interpreter; use float16/float32 on CPU")


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return DEFAULT_NUM_SMS
    return _cuda_num_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
