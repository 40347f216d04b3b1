"""Argument checks for the public kernel entry points.

Only shapes, dtypes, devices and strides are checked: reading tensor values would synchronize with the device
(and break CUDA-graph capture). Every error is a ValueError whose message starts with the argument's name.
"""

from __future__ import annotations

import math

import torch

from kernels.planning import MAX_NUM_SPLITS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32,)
SLOT_DTYPES = (torch.int32, torch.int64)
CODE_DTYPES = (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)  # an 8-bit KV cache's element types
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def _tensor(name: str, x: object, ndim: int, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise ValueError(f"{name}: dtype must be one of {[str(d) for d in dtypes]}, got {x.dtype}")
    if x.dim() and x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{name}: last dimension must be contiguous (stride 1), got strides {x.stride()}")
    return x


def _same_device(reference: str, device: torch.device, **tensors: torch.Tensor) -> None:
    for name, x in tensors.items():
        if x.device != device:
            raise ValueError(f"{name}: on {x.device}, but {reference} is on {device}")


def _optional_int(name: str, value: object, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected a Python int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def _check_kv_scales(key_cache, k_scales, v_scales) -> None:
    """An 8-bit cache comes with both scale tensors, [num_blocks, block_size, KVH] fp32, equal strides, heads
    contiguous; a cache in the activations' dtype with neither."""
    if (k_scales is None) != (v_scales is None):
        raise ValueError(f"{'v_scales' if k_scales is not None else 'k_scales'}: k_scales and v_scales go together")
    if k_scales is None:
        return
    if key_cache.dtype not in CODE_DTYPES:
        raise ValueError(f"k_scales: given, but key_cache's dtype {key_cache.dtype} is not an 8-bit format "
                         f"({[str(d) for d in CODE_DTYPES]})")
    for name, s in (("k_scales", k_scales), ("v_scales", v_scales)):
        _tensor(name, s, 3, (torch.float32,))
        if tuple(s.shape) != tuple(key_cache.shape[:3]):
            raise ValueError(f"{name}: expected shape {tuple(key_cache.shape[:3])} (key_cache's blocks, block_size, "
                             f"KV heads), got {tuple(s.shape)}")
        _same_device("key_cache", key_cache.device, **{name: s})
    if v_scales.stride() != k_scales.stride():
        raise ValueError(f"v_scales: strides {v_scales.stride()} differ from k_scales' {k_scales.stride()}")


def check_paged_attention_args(query, key_cache, value_cache, block_tables, cu_seqlens_q, seq_lens, scale, out,
                               max_query_len, max_seq_len, num_splits, k_scales=None, v_scales=None) -> None:
    _tensor("query", query, 3, FLOAT_DTYPES)
    quantized = k_scales is not None or v_scales is not None
    cache_dtypes = CODE_DTYPES if quantized else FLOAT_DTYPES
    _tensor("key_cache", key_cache, 4, cache_dtypes)
    _tensor("value_cache", value_cache, 4, cache_dtypes)
    _check_kv_scales(key_cache, k_scales, v_scales)
    _tensor("block_tables", block_tables, 2, INDEX_DTYPES)
    _tensor("cu_seqlens_q", cu_seqlens_q, 1, INDEX_DTYPES)
    _tensor("seq_lens", seq_lens, 1, INDEX_DTYPES)

    num_tokens, num_heads, head_dim = query.shape
    num_blocks, block_size, num_kv_heads, cache_head_dim = key_cache.shape
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"query: head_dim must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {head_dim}")
    if not quantized and key_cache.dtype != query.dtype:
        raise ValueError(f"key_cache: dtype {key_cache.dtype} differs from query's {query.dtype}")
    if value_cache.dtype != key_cache.dtype:
        raise ValueError(f"value_cache: dtype {value_cache.dtype} differs from key_cache's {key_cache.dtype}")
    if cache_head_dim != head_dim:
        raise ValueError(f"key_cache: head_dim {cache_head_dim} differs from query's {head_dim}")
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache: shape {tuple(value_cache.shape)} differs from key_cache's "
                         f"{tuple(key_cache.shape)}")
    if block_size < 1 or num_kv_heads < 1:
        raise ValueError(f"key_cache: block_size and num_kv_heads must be >= 1, got shape {tuple(key_cache.shape)}")
    if num_heads % num_kv_heads:
        raise ValueError(f"query: {num_heads} heads is not a multiple of key_cache's {num_kv_heads} KV heads")
    num_seqs = seq_lens.shape[0]
    if cu_seqlens_q.shape[0] != num_seqs + 1:
        raise ValueError(f"cu_seqlens_q: expected {num_seqs + 1} entries (seq_lens has {num_seqs}), "
                         f"got {cu_seqlens_q.shape[0]}")
    if block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables: expected {num_seqs} rows (one per sequence), got {block_tables.shape[0]}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite Python float, got {scale!r}")
    if out is not None:
        _tensor("out", out, 3, FLOAT_DTYPES)
        if out.shape != query.shape:
            raise ValueError(f"out: shape {tuple(out.shape)} differs from query's {tuple(query.shape)}")
        if out.dtype != query.dtype:
            raise ValueError(f"out: dtype {out.dtype} differs from query's {query.dtype}")
        _same_device("query", query.device, out=out)
    _same_device("query", query.device, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                 cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens)
    _optional_int("max_query_len", max_query_len, 0)
    _optional_int("max_seq_len", max_seq_len, 0)
    _optional_int("num_splits", num_splits, 1)
    if num_splits is not None and num_splits > MAX_NUM_SPLITS:
        raise ValueError(f"num_splits: must be <= {MAX_NUM_SPLITS}, got {num_splits}")
    # Host-side ints only (no device sync): the kernels read block_tables[s, key // block_size] for every key
    # up to the longest context, so the table must have a column for each of those blocks.
    if max_seq_len is not None and block_tables.shape[1] * block_size < max_seq_len:
        raise ValueError(f"block_tables: {block_tables.shape[1]} columns of {block_size}-token blocks cover "
                         f"{block_tables.shape[1] * block_size} keys, but max_seq_len is {max_seq_len}")


def check_window_and_softcap(sliding_window, softcap) -> None:
    """sliding_window: None or a Python int >= 1; softcap: None or a finite Python float > 0."""
    _optional_int("sliding_window", sliding_window, 1)
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float))
                                or not math.isfinite(softcap) or softcap <= 0):
        raise ValueError(f"softcap: expected None or a finite Python float > 0, got {softcap!r}")


def check_store_kv_args(key, value, key_cache, value_cache, slot_mapping, k_scales=None, v_scales=None) -> None:
    _tensor("key", key, 3, FLOAT_DTYPES)
    _tensor("value", value, 3, FLOAT_DTYPES)
    quantized = k_scales is not None or v_scales is not None
    cache_dtypes = CODE_DTYPES if quantized else FLOAT_DTYPES
    _tensor("key_cache", key_cache, 4, cache_dtypes)
    _tensor("value_cache", value_cache, 4, cache_dtypes)
    _check_kv_scales(key_cache, k_scales, v_scales)
    _tensor("slot_mapping", slot_mapping, 1, SLOT_DTYPES)
    if value_cache.shape != key_cache.shape:
        raise ValueError(f"value_cache: shape {tuple(value_cache.shape)} differs from key_cache's "
                         f"{tuple(key_cache.shape)}")
    if key_cache.shape[1] < 1:
        raise ValueError(f"key_cache: block_size must be >= 1, got shape {tuple(key_cache.shape)}")
    if key.shape[1:] != key_cache.shape[2:]:
        raise ValueError(f"key: [KVH, D] = {tuple(key.shape[1:])} differs from key_cache's "
                         f"{tuple(key_cache.shape[2:])}")
    if value.shape != key.shape:
        raise ValueError(f"value: shape {tuple(value.shape)} differs from key's {tuple(key.shape)}")
    if value_cache.dtype != key_cache.dtype:
        raise ValueError(f"value_cache: dtype {value_cache.dtype} differs from key_cache's {key_cache.dtype}")
    if not quantized and key.dtype != key_cache.dtype:
        raise ValueError(f"key: dtype {key.dtype} differs from key_cache's {key_cache.dtype}")
    if value.dtype != key.dtype:
        raise ValueError(f"value: dtype {value.dtype} differs from key's {key.dtype}")
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"slot_mapping: expected {key.shape[0]} entries (one per token), got {slot_mapping.shape[0]}")
    _same_device("key", key.device, value=value, key_cache=key_cache, value_cache=value_cache,
                 slot_mapping=slot_mapping)


MAX_ROW = 65536  # the element-wise kernels hold a whole row (RMSNorm) or a head's half (RoPE) in registers


def _float_arg(name: str, value: object, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}: expected a finite Python float >= {minimum}, got {value!r}")


def _like(name: str, x: object, ref: torch.Tensor, ref_name: str, shape: tuple[int, ...] | None = None) -> None:
    """x: a tensor of ref's dtype and device (and `shape`, default ref's), last dimension contiguous."""
    _tensor(name, x, len(shape) if shape is not None else ref.dim(), FLOAT_DTYPES)
    want = tuple(shape) if shape is not None else tuple(ref.shape)
    if tuple(x.shape) != want:
        raise ValueError(f"{name}: expected shape {want} (from {ref_name}), got {tuple(x.shape)}")
    if x.dtype != ref.dtype:
        raise ValueError(f"{name}: dtype {x.dtype} differs from {ref_name}'s {ref.dtype}")
    _same_device(ref_name, ref.device, **{name: x})


def check_rms_norm_args(x, weight, eps, delta, out) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a [rows, N] or [rows, heads, N] tensor, got {shape}")
    _tensor("x", x, x.dim(), FLOAT_DTYPES)
    n = x.shape[-1]
    if not 1 <= n <= MAX_ROW:
        raise ValueError(f"x: row length must be in [1, {MAX_ROW}], got {n}")
    _tensor("weight", weight, 1, FLOAT_DTYPES)
    if weight.shape[0] != n:
        raise ValueError(f"weight: expected {n} entries (x's row length), got {weight.shape[0]}")
    _same_device("x", x.device, weight=weight)
    _float_arg("eps", eps, 0.0)
    if delta is not None:
        _like("delta", delta, x, "x")
    if out is not None:
        _like("out", out, x, "x")


def check_rope_args(q, k, cos, sin) -> None:
    _tensor("q", q, 3, FLOAT_DTYPES)
    num_tokens, _, head_dim = q.shape
    if head_dim % 2 or not 2 <= head_dim <= 2 * MAX_ROW:
        raise ValueError(f"q: head_dim must be even and in [2, {2 * MAX_ROW}], got {head_dim}")
    _tensor("k", k, 3, FLOAT_DTYPES)
    if k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k: expected [{num_tokens}, KVH, {head_dim}] (q's tokens and head_dim), "
                         f"got {tuple(k.shape)}")
    if k.dtype != q.dtype:
        raise ValueError(f"k: dtype {k.dtype} differs from q's {q.dtype}")
    _same_device("q", q.device, k=k)
    for name, table in (("cos", cos), ("sin", sin)):
        shape = (num_tokens, head_dim // 2) if not isinstance(table, torch.Tensor) or table.dim() != 3 \
            else (num_tokens, 1, head_dim // 2)
        _like(name, table, q, "q", shape)


def check_silu_and_mul_args(gate_up, out) -> None:
    _tensor("gate_up", gate_up, 2, FLOAT_DTYPES)
    if gate_up.shape[1] % 2:
        raise ValueError(f"gate_up: width must be even ([gate | up]), got {gate_up.shape[1]}")
    if out is not None:
        _like("out", out, gate_up, "gate_up", (gate_up.shape[0], gate_up.shape[1] // 2))


def check_int4_matmul_args(x, qweight, scales_and_zeros, group_size) -> None:
    """x [M, K]; qweight uint8 [N, K / 2] (rows contiguous); scales_and_zeros [N, K / g, 2] of any float dtype,
    each row's pairs contiguous; g a power of two >= 32 dividing K."""
    _tensor("x", x, 2, FLOAT_DTYPES)
    _tensor("qweight", qweight, 2, (torch.uint8,))
    _tensor("scales_and_zeros", scales_and_zeros, 3, FLOAT_DTYPES)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 32 \
            or group_size & (group_size - 1):
        raise ValueError(f"group_size: expected a Python int, a power of two >= 32, got {group_size!r}")
    m, k = x.shape
    if k % group_size:
        raise ValueError(f"group_size: {group_size} does not divide x's {k} columns")
    n = qweight.shape[0]
    if qweight.shape[1] * 2 != k:
        raise ValueError(f"qweight: expected [N, {k // 2}] (two codes a byte over x's {k} columns), "
                         f"got {tuple(qweight.shape)}")
    if scales_and_zeros.shape != (n, k // group_size, 2):
        raise ValueError(f"scales_and_zeros: expected shape {(n, k // group_size, 2)}, "
                         f"got {tuple(scales_and_zeros.shape)}")
    if scales_and_zeros.stride(1) != 2:
        raise ValueError(f"scales_and_zeros: each row's (scale, zero) pairs must be contiguous, got strides "
                         f"{scales_and_zeros.stride()}")
    _same_device("x", x.device, qweight=qweight, scales_and_zeros=scales_and_zeros)
