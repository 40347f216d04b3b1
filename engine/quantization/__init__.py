"""Quantization: smaller weights (int8 / int4 weight-only, fp8 on Hopper) and an 8-bit paged KV cache.

Module map (one job each):
    config      the user's choices as frozen, validated data (`WeightQuantConfig`, `KVCacheDtype`)
    int8        per-output-channel int8 weights and their linear (`torch.ops.aten._weight_int8pack_mm` on CPU)
    int4        grouped asymmetric int4 weights and their linear (`_weight_int4pack_mm_for_cpu` on CPU)
    w8a8        int8 weights and per-step dynamic int8 activations (PyTorch's fbgemm/oneDNN GEMM; CPU only)
    fp8         per-channel fp8 weights and per-token fp8 activations (`torch._scaled_mm`, CUDA sm_89+ only)
    apply       swap a loaded (or tensor-parallel-sharded) model's projections for quantized ones; byte report
    kv_cache    8-bit keys and values with one scale per (token, KV head): quantize / dequantize, bytes per token

Weights are quantized at load time, after the checkpoint (or a tensor-parallel rank's shard of it) is in
memory: each rank quantizes the slice it holds, so tensor parallelism and quantization compose.
"""

from .config import KV_CACHE_DTYPES, QUANT_METHODS, KVCacheDtype, WeightQuantConfig, kv_cache_dtype
from .apply import WeightReport, quantize_model

__all__ = ["KV_CACHE_DTYPES", "QUANT_METHODS", "KVCacheDtype", "WeightQuantConfig", "WeightReport",
           "kv_cache_dtype", "quantize_model"]
