"""Decode attention over the paged KV cache on the CPU, read in place: the binding of paged_decode.c.

One call handles every decoding sequence of a step (one query token each) for one layer: sequence s's query
row `rows[s]` attends to its keys `first_key[s] .. seq_lens[s] - 1` through its block table, and the result
goes to the same row of `out`. The per-step host arrays (`DecodeBatch`) are built once and read by every
layer. Float32 queries; the cache float32 or 8-bit (int8 and both fp8 formats, one fp32 scale per token and
KV head, as engine/quantization/kv_cache.py stores them). kernels.reference.paged_attention_ref is the oracle.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .build import build_library

SOURCE = Path(__file__).with_name("paged_decode.c")
_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_ARGTYPES = [_P, _I64, _P, _P, _P, _P, _P, _INT, _P, _P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _F32, _F32,
             _I64, _INT]
# the cache's storage -> the C function's `kind`: floats, int8 codes, other 8-bit codes through a table
_KINDS = {torch.float32: 0, torch.int8: 1, torch.uint8: 2, torch.float8_e4m3fn: 2, torch.float8_e5m2: 2}


@dataclass(frozen=True)
class DecodeBatch:
    """The decoding sequences of one step, as the kernel reads them (contiguous int64 host arrays)."""

    rows: np.ndarray  # [S] query (and output) row of each sequence
    block_tables: np.ndarray  # [S, B] block ids of each sequence's pages, in order
    seq_lens: np.ndarray  # [S] keys in each sequence's context (the new token's included)
    first_key: np.ndarray | None  # [S] oldest key each sequence reads (a sliding window); None: key 0
    every_row: bool  # rows == 0 .. S-1 and the query has no other row: the output is entirely the kernel's
    num_query_rows: int  # rows of the query this batch indexes (every row index is below it)
    args: tuple  # the arrays' pointers and sizes as the C function takes them, computed once per step

    @classmethod
    def build(cls, block_tables: np.ndarray, seq_lens: np.ndarray, rows: np.ndarray | None = None, *,
              num_query_rows: int | None = None, sliding_window: int | None = None) -> DecodeBatch:
        seq_lens = np.ascontiguousarray(seq_lens, dtype=np.int64)
        if rows is None:
            rows = np.arange(len(seq_lens), dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        tables = np.ascontiguousarray(block_tables, dtype=np.int64)
        if tables.ndim != 2 or len(tables) != len(seq_lens) or len(rows) != len(seq_lens):
            raise ValueError(f"block_tables: need [S, B] for S={len(seq_lens)} sequences, got {tables.shape}")
        if len(seq_lens) and int(seq_lens.min()) < 1:
            raise ValueError("seq_lens: every decoding sequence has at least its new key")
        first = None
        if sliding_window is not None:
            first = np.ascontiguousarray(np.maximum(seq_lens - sliding_window, 0), dtype=np.int64)
        n = len(rows) if num_query_rows is None else num_query_rows
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise ValueError(f"rows: every row index in [0, {n}), got {rows.min()}..{rows.max()}")
        every = n == len(rows) and bool((rows == np.arange(len(rows))).all())
        args = (tables.ctypes.data, tables.shape[1], seq_lens.ctypes.data, None if first is None else first.ctypes.data,
                rows.ctypes.data, len(rows))
        return cls(rows, tables, seq_lens, first, every, n, args)


class PagedDecodeKernel:
    """The compiled kernel, ready to call (`load_paged_decode` builds or finds it)."""

    def __init__(self, library: Path):
        self.library = library
        self._fn = ctypes.CDLL(str(library)).kvserve_paged_decode
        self._fn.argtypes = _ARGTYPES
        self._fn.restype = None
        self.function = self._fn  # the C entry point itself, for C code that calls it (decode_step.c)
        self._luts: dict[torch.dtype, torch.Tensor] = {}  # fp8 code byte -> float, per format

    def _lut(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._luts:
            self._luts[dtype] = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float().contiguous()
        return self._luts[dtype]

    def __call__(self, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, batch: DecodeBatch,
                 scale: float, out: torch.Tensor, *, softcap: float | None = None,
                 k_scales: torch.Tensor | None = None, v_scales: torch.Tensor | None = None) -> torch.Tensor:
        """out[rows[s]] = attention of query[rows[s]] over sequence s's cached keys; other rows untouched.
        Called once per layer, so the checks are a few attribute reads (the batch was checked when built)."""
        t, h, d = query.shape
        nb, bs, kvh, dk = key_cache.shape
        if query.dtype != torch.float32 or out.dtype != torch.float32:
            raise ValueError(f"query: the CPU decode kernel takes float32, got {query.dtype}")
        if dk != d or h % kvh or value_cache.shape != key_cache.shape or out.shape != query.shape:
            raise ValueError(f"key_cache: shape {tuple(key_cache.shape)} does not fit query {tuple(query.shape)}")
        if query.stride(2) != 1 or query.stride(1) != d or not (out.is_contiguous() and key_cache.is_contiguous()
                                                                and value_cache.is_contiguous()):
            raise ValueError("query: rows of contiguous [H, D] heads (a row stride is fine); out and the caches "
                             "contiguous")
        if t != batch.num_query_rows:
            raise ValueError(f"rows: the batch indexes {batch.num_query_rows} query rows, the query has {t}")
        kind = _KINDS.get(key_cache.dtype)
        if kind is None or value_cache.dtype != key_cache.dtype or (kind > 0) != (k_scales is not None):
            raise ValueError(f"key_cache: float32 or 8-bit codes with k_scales / v_scales, got {key_cache.dtype}")
        ks = vs = lut = None
        if kind:
            if v_scales is None or k_scales.shape != key_cache.shape[:3] or v_scales.shape != key_cache.shape[:3] or \
                    k_scales.dtype != torch.float32 or not (k_scales.is_contiguous() and v_scales.is_contiguous()):
                raise ValueError(f"k_scales: need contiguous float32 [{nb}, {bs}, {kvh}] scales beside an 8-bit cache")
            ks, vs = k_scales.data_ptr(), v_scales.data_ptr()
            lut = self._lut(key_cache.dtype).data_ptr() if kind == 2 else None
        threads = torch.get_num_threads()
        # a few sequences: one task per (sequence, KV head), so they still spread over every thread
        heads_per_task = kvh if batch.args[-1] >= 2 * threads else 1
        self._fn(query.data_ptr(), query.stride(0), out.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(),
                 ks, vs, kind, lut, *batch.args, h, kvh, d, bs, float(scale), float(softcap or 0.0), heads_per_task,
                 threads)
        return out


def load_paged_decode(cache_dir: Path | None = None, march: str = "native") -> PagedDecodeKernel:
    """Build (or find in the cache) and load the kernel; CpuKernelUnavailable where it cannot be built."""
    return PagedDecodeKernel(build_library(SOURCE, cache_dir, march))
