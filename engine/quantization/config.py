"""The quantization choices as frozen data, validated where they are made (errors name the parameter).

`WeightQuantConfig`: which weight format (`quantization`) and, for int4, how many input columns share one
scale and zero point (`quantization_group_size`); `gguf` runs a GGUF file's own Q4_0/Q4_1 blocks as int4 with group size 32;
`awq`, `gptq` and `compressed-tensors` load a pre-quantized checkpoint's packed int4 (`prepacked.py`).
`KVCacheDtype`: how the paged cache stores keys and values
(`kv_cache_dtype`): `auto` keeps the model's dtype; the 8-bit formats store one byte per element plus one fp32
scale per (token, KV head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checkpoint_formats import KERNEL_GROUP_SIZES, PREPACKED_METHODS

QUANT_METHODS = ("int8", "int4", "fp8", "w8a8", "gguf") + PREPACKED_METHODS
LM_HEAD_METHODS = ("int8", "int4", "w8a8")  # the methods that also store the LM head in int8 (quantize_lm_head;
# w8a8: the head in W8A8 as well)
INT4_GROUP_SIZES = KERNEL_GROUP_SIZES  # what the CPU int4 kernel accepts
KV_CACHE_DTYPES = ("auto", "int8", "fp8_e4m3", "fp8_e5m2")


@dataclass(frozen=True)
class WeightQuantConfig:
    """Weight-only int8 (one scale per output channel), int4 (asymmetric, one scale and zero per group of
    `group_size` input columns), fp8 (weights per output channel, activations per token; CUDA sm_89+), or
    w8a8 (int8 weights per output channel, int8 activations per step; CPU only)."""

    method: str
    group_size: int = 32
    lm_head: bool = True  # int8/int4: the LM head too, in int8 per vocabulary row (apply.quantize_lm_head)
    source: str | None = None  # gguf: the GGUF file whose Q4 blocks the projections are built from; awq, gptq,
    # compressed-tensors: the checkpoint directory holding the packed projections

    @property
    def quantizes_lm_head(self) -> bool:
        """Whether the LM head is read in int8 too: asked for (`lm_head`), and the method is int8 or int4."""
        return self.lm_head and self.method in LM_HEAD_METHODS

    @property
    def prepacked(self) -> bool:
        """The checkpoint holds the projections already packed (no dense weights to load for them)."""
        return self.method in PREPACKED_METHODS

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise ValueError(f"quantization: must be one of {QUANT_METHODS} (or None), got {self.method!r}")
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"quantization_group_size: must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")

    def check_shapes(self, in_features: dict[str, int]) -> None:
        """int4 groups must tile every projection's input (hidden size, head dims, MLP width)."""
        if self.method != "int4":
            return
        for what, k in in_features.items():
            if k % self.group_size:
                raise ValueError(f"quantization_group_size: {self.group_size} does not divide the {what} ({k}); "
                                 f"use one of {[g for g in INT4_GROUP_SIZES if k % g == 0] or 'none: int4 cannot run'}")


@dataclass(frozen=True)
class KVCacheDtype:
    """How the paged KV cache stores keys and values. `storage` None = the model's dtype, unquantized."""

    name: str
    storage: torch.dtype | None
    qmax: float  # the largest magnitude the 8-bit code represents: the scale maps each row's amax onto it

    @property
    def quantized(self) -> bool:
        return self.storage is not None

    @property
    def is_float8(self) -> bool:
        return self.storage in (torch.float8_e4m3fn, torch.float8_e5m2)

    def bytes_per_token(self, num_layers: int, num_kv_heads: int, head_dim: int, model_dtype: torch.dtype) -> int:
        """K and V of one token over every layer: one element per head_dim, plus one fp32 scale per KV head."""
        if self.storage is None:
            return 2 * num_layers * num_kv_heads * head_dim * _itemsize(model_dtype)
        return 2 * num_layers * num_kv_heads * (head_dim * _itemsize(self.storage) + SCALE_BYTES)


SCALE_DTYPE = torch.float32
SCALE_BYTES = 4


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kv_cache_dtype(name: str) -> KVCacheDtype:
    """The `KVCacheDtype` for a `kv_cache_dtype` value (ValueError naming the parameter otherwise)."""
    if name == "auto":
        return KVCacheDtype("auto", None, 0.0)
    if name == "int8":
        return KVCacheDtype("int8", torch.int8, 127.0)
    if name == "fp8_e4m3":
        return KVCacheDtype("fp8_e4m3", torch.float8_e4m3fn, float(torch.finfo(torch.float8_e4m3fn).max))
    if name == "fp8_e5m2":
        return KVCacheDtype("fp8_e5m2", torch.float8_e5m2, float(torch.finfo(torch.float8_e5m2).max))
    raise ValueError(f"kv_cache_dtype: must be one of {KV_CACHE_DTYPES}, got {name!r}")
