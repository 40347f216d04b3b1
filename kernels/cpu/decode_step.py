"""Int8 linear layers and a whole Llama decode step on the CPU: the binding of decode_step.c.

`int8_linear(x, qweight, scale)` is y = x @ (qweight * scale)^T (+ bias) in float32, reading one byte per
weight (the reference: `F.linear(x, qweight.float() * scale[:, None])`). `w8a8_linear` is the same product
with each row of x quantized to int8 first (engine/quantization/w8a8.py's scheme; exact int32 sums).
`llama_decode` runs one token of every decoding sequence through all the layers of a Llama-shaped decoder
whose projections are int8 weights of either kind, and the final norm, in one call: the per-layer Python and
framework dispatch (hundreds of small ops a step) is gone, which is what one-stream decode on a CPU pays for
most. `LlamaDecodeWeights` is the model's tensors as the C function reads them (addresses gathered once).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .build import CpuKernelUnavailable, build_library
from .paged_decode import DecodeBatch, PagedDecodeKernel

SOURCE = Path(__file__).with_name("decode_step.c")
_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_LINEAR_ARGS = [_P, _I64, _I64, _P, _P, _P, _I64, _I64, _P, _I64, _INT]
_W8A8_ARGS = [_P, _I64, _I64, _P, _P, _P, _P, _I64, _I64, _P, _I64, _INT]
_DECODE_ARGS = [_P, _I64, _P, _P, _P, _F32, _F32, _P, _P, _I64, _P, _P, _P, _I64, _P, _I64, _P, _P, _P, _I64,
                _INT, _INT, _P]
# one layer's tensors, in the order decode_step.c's LAYER_FIELDS reads them
LAYER_FIELDS = ("input_norm", "qkv_weight", "qkv_scale", "qkv_bias", "o_weight", "o_scale", "o_bias", "post_norm",
                "gate_up_weight", "gate_up_scale", "gate_up_bias", "down_weight", "down_scale", "down_bias",
                "key_cache", "value_cache", "qkv_wsum", "o_wsum", "gate_up_wsum", "down_wsum", "key_scales",
                "value_scales")
STEMS = ("qkv", "o", "gate_up", "down")
W8A8_MAX_CODE = 63  # w8a8 weight codes lie in [-63, 63] (decode_step.c: 16-bit pair sums cannot overflow)


@dataclass(frozen=True)
class LlamaDims:
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    block_size: int
    eps: float
    scale: float  # attention scores' scale (head_dim ** -0.5 for Llama)


@dataclass(frozen=True)
class LlamaDecodeWeights:
    """A Llama-shaped decoder's tensors for `llama_decode`: per layer the LAYER_FIELDS (int8 [N, K] weights,
    float32 scales [N], float32 biases or None, float32 norm weights, float32 caches [blocks, block_size, KVH,
    D] or int8 ones with float32 key_scales / value_scales [blocks, block_size, KVH] (an int8 KV cache, as
    engine/quantization/kv_cache.py stores it); with `w8a8`, int32 weight-code sums [N] per projection, codes
    in [-63, 63]), the embedding [V, H],
    the final norm, and RoPE's cos / sin tables [positions, >= head_dim / 2]. It keeps the tensors alive:
    the C function gets their addresses."""

    layers: tuple[dict[str, torch.Tensor | None], ...]
    embed: torch.Tensor
    final_norm: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    dims: LlamaDims
    table: np.ndarray  # [layers, len(LAYER_FIELDS)] the addresses
    dims_array: np.ndarray
    w8a8: bool  # the projections quantize their inputs to int8 (`w8a8_linear`); else float32 inputs

    @classmethod
    def build(cls, layers, embed, final_norm, cos, sin, dims: LlamaDims, w8a8: bool = False) -> LlamaDecodeWeights:
        h, nh, kvh, d, i = dims.hidden, dims.num_heads, dims.num_kv_heads, dims.head_dim, dims.intermediate
        shapes = {"qkv_weight": ((nh + 2 * kvh) * d, h), "o_weight": (h, nh * d), "gate_up_weight": (2 * i, h),
                  "down_weight": (h, i)}
        rows = []
        for n, layer in enumerate(layers):
            for name, shape in shapes.items():
                w, stem = layer[name], name.removesuffix("_weight")
                if w.dtype != torch.int8 or tuple(w.shape) != shape or not w.is_contiguous():
                    raise ValueError(f"layers[{n}].{name}: need contiguous int8 {shape}, got {w.dtype} "
                                     f"{tuple(w.shape)}")
                for part in ("scale", "bias"):
                    t = layer[f"{stem}_{part}"]
                    if (t is None and part == "scale") or (t is not None and (
                            t.dtype != torch.float32 or t.shape != (shape[0],) or not t.is_contiguous())):
                        raise ValueError(f"layers[{n}].{stem}_{part}: need contiguous float32 [{shape[0]}]")
                if w8a8:
                    t = layer.get(f"{stem}_wsum")
                    if t is None or t.dtype != torch.int32 or t.shape != (shape[0],) or not t.is_contiguous():
                        raise ValueError(f"layers[{n}].{stem}_wsum: need contiguous int32 [{shape[0]}] (w8a8)")
            for name in ("key_cache", "value_cache"):
                c, sc = layer[name], layer.get(name.replace("cache", "scales"))
                if c.dtype != (torch.float32 if sc is None else torch.int8) or c.shape[1:] != (dims.block_size, kvh, d) \
                        or not c.is_contiguous():
                    raise ValueError(f"layers[{n}].{name}: need a contiguous float32 [blocks, {dims.block_size}, "
                                     f"{kvh}, {d}] cache, or int8 codes with scales beside them")
                if sc is not None and (sc.dtype != torch.float32 or sc.shape != c.shape[:3] or not sc.is_contiguous()):
                    raise ValueError(f"layers[{n}].{name.replace('cache', 'scales')}: need contiguous float32 "
                                     f"{tuple(c.shape[:3])} scales")
            rows.append([0 if layer.get(f) is None else layer[f].data_ptr() for f in LAYER_FIELDS])
        for name, t in (("embed", embed), ("final_norm", final_norm), ("cos", cos), ("sin", sin)):
            if t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError(f"{name}: need a contiguous float32 tensor")
        if cos.shape != sin.shape or 2 * cos.shape[1] < d:
            raise ValueError(f"cos: need [positions, >= {d // 2}] tables, got {tuple(cos.shape)}")
        table = np.ascontiguousarray(rows, dtype=np.int64).reshape(len(layers), len(LAYER_FIELDS))
        dims_array = np.array([h, nh, kvh, d, i, dims.block_size], dtype=np.int64)
        return cls(tuple(layers), embed, final_norm, cos, sin, dims, table, dims_array, w8a8)


class DecodeStepKernel:
    """The compiled library (`load_decode_step` builds or finds it)."""

    def __init__(self, library: Path, attention: PagedDecodeKernel):
        self.library, self.attention = library, attention
        lib = ctypes.CDLL(str(library))
        lib.kvserve_decode_layer_fields.restype = ctypes.c_int64
        if lib.kvserve_decode_layer_fields() != len(LAYER_FIELDS):  # a library built from another source
            raise CpuKernelUnavailable(f"{library.name} reads {lib.kvserve_decode_layer_fields()} tensors a layer, "
                                       f"this binding passes {len(LAYER_FIELDS)}")
        self._linear, self._decode = lib.kvserve_int8_linear, lib.kvserve_llama_decode
        self._w8a8 = lib.kvserve_w8a8_linear
        self._linear.argtypes, self._linear.restype = _LINEAR_ARGS, None
        self._w8a8.argtypes, self._w8a8.restype = _W8A8_ARGS, ctypes.c_int
        self._decode.argtypes, self._decode.restype = _DECODE_ARGS, ctypes.c_int
        self._attention_fn = ctypes.cast(attention.function, ctypes.c_void_p).value

    def int8_linear(self, x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] float32 (rows of contiguous values) @ (qweight [N, K] int8 * scale [N] float32)^T + bias."""
        m, n, k = self._check(x, qweight, scale, bias)
        y = torch.empty(m, n)
        if m:
            self._linear(x.data_ptr(), m, x.stride(0), qweight.data_ptr(), scale.data_ptr(),
                         None if bias is None else bias.data_ptr(), n, k, y.data_ptr(), n, torch.get_num_threads())
        return y

    def w8a8_linear(self, x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, wsum: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
        """`int8_linear` with each row of x quantized to int8 (r = max |x|, codes round(127 x / r)) and exact
        int32 sums; qweight's codes must lie in [-63, 63] and wsum [N] int32 be their row sums."""
        m, n, k = self._check(x, qweight, scale, bias)
        if wsum.dtype != torch.int32 or wsum.shape != (n,) or not wsum.is_contiguous():
            raise ValueError(f"wsum: need contiguous int32 [{n}] (the weight codes' row sums), got {wsum.dtype} "
                             f"{tuple(wsum.shape)}")
        y = torch.empty(m, n)
        if m and self._w8a8(x.data_ptr(), m, x.stride(0), qweight.data_ptr(), scale.data_ptr(), wsum.data_ptr(),
                            None if bias is None else bias.data_ptr(), n, k, y.data_ptr(), n,
                            torch.get_num_threads()):
            raise MemoryError("w8a8_linear: no memory for the quantized activations")
        return y

    @staticmethod
    def _check(x, qweight, scale, bias) -> tuple[int, int, int]:
        m, k = x.shape
        n = qweight.shape[0]
        if x.dtype != torch.float32 or (k > 1 and x.stride(1) != 1) or qweight.shape[1] != k:
            raise ValueError(f"x: need float32 [M, {qweight.shape[1]}] with contiguous rows, got {x.dtype} "
                             f"{tuple(x.shape)} strides {x.stride()}")
        if qweight.dtype != torch.int8 or not qweight.is_contiguous() or scale.dtype != torch.float32 or \
                scale.shape != (n,) or not scale.is_contiguous() or (bias is not None and (
                    bias.dtype != torch.float32 or bias.shape != (n,) or not bias.is_contiguous())):
            raise ValueError(f"qweight: need contiguous int8 [N, K] with contiguous float32 scale (and bias) [N], got "
                             f"{qweight.dtype} {tuple(qweight.shape)}, scale {scale.dtype} {tuple(scale.shape)}")
        return m, n, k

    def llama_decode(self, weights: LlamaDecodeWeights, ids: torch.Tensor, positions: torch.Tensor,
                     slots: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
        """The final-normed hidden states [S, H] of one new token per sequence (`ids`, `positions`, `slots`:
        int64 [S] on the CPU; `batch`: the sequences' block tables and lengths, rows 0 .. S-1 in order). Stores
        each token's keys and values in every layer's cache as it goes."""
        s = len(ids)
        if not batch.every_row or len(batch.rows) != s or len(positions) != s or len(slots) != s:
            raise ValueError(f"batch: need one decode row per sequence in order, {s} of them")
        for name, t in (("ids", ids), ("positions", positions), ("slots", slots)):
            if t.dtype != torch.int64 or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError(f"{name}: need contiguous int64 on the CPU, got {t.dtype} on {t.device}")
        dims, threads = weights.dims, torch.get_num_threads()
        out = torch.empty(s, dims.hidden)
        if s == 0:
            return out
        heads_per_task = dims.num_kv_heads if s >= 2 * threads else 1
        tables, stride, lens, _, rows, _ = batch.args
        rc = self._decode(weights.table.ctypes.data, len(weights.layers), weights.embed.data_ptr(),
                          weights.final_norm.data_ptr(), weights.dims_array.ctypes.data, dims.eps, dims.scale,
                          weights.cos.data_ptr(), weights.sin.data_ptr(), weights.cos.stride(0), ids.data_ptr(),
                          positions.data_ptr(), slots.data_ptr(), s, tables, stride, lens, rows,
                          self._attention_fn, heads_per_task, int(weights.w8a8), threads, out.data_ptr())
        if rc:
            raise MemoryError("llama_decode: the step's scratch buffers could not be allocated")
        return out


def load_decode_step(attention: PagedDecodeKernel, cache_dir: Path | None = None,
                     march: str = "native") -> DecodeStepKernel:
    """Build (or find in the cache) and load the library; CpuKernelUnavailable where it cannot be built.
    `attention`: the paged decode kernel each layer's attention calls."""
    return DecodeStepKernel(build_library(SOURCE, cache_dir, march), attention)
