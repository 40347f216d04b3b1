"""Quantization: smaller weights (int8 / int4 weight-only, fp8 on Hopper), pre-quantized int4 checkpoints and
an 8-bit paged KV cache.

Module map (one job each):
    config              the user's choices as frozen, validated data (`WeightQuantConfig`, `KVCacheDtype`)
    int8                per-output-channel int8 weights and their linear (`_weight_int8pack_mm` on CPU)
    int4                grouped asymmetric int4 weights and their linear (`_weight_int4pack_mm_for_cpu` on CPU)
    w8a8                int8 weights and per-token int8 activations (PyTorch's dynamic int8 GEMM; CPU only)
    fp8                 per-channel fp8 weights and per-token fp8 activations (`torch._scaled_mm`, CUDA sm_89+)
    gguf_blocks/_int4   a GGUF file's Q4_0/Q4_1/Q8_0 blocks as int4 / grouped int8 layers
    checkpoint_formats  what an AWQ / GPTQ / compressed-tensors checkpoint's quantization_config declares,
                        checked (plain Python, no torch: `kvserve plan` reads it too)
    prepacked           what those three share: config check, nibble unpacking, the checkpoint reader
    awq, gptq, compressed_tensors   each format's tensors -> int4 codes, scales and zeros
    apply               swap a loaded (or tensor-parallel-sharded) model's projections for quantized ones; byte report
    sizing              the bytes a format saves, from the model's shape alone
    kv_cache            8-bit keys and values with one scale per (token, KV head): quantize / dequantize,
                        bytes per token

Weights are quantized at load time, after the checkpoint (or a tensor-parallel rank's shard of it) is in
memory: each rank quantizes the slice it holds, so tensor parallelism and quantization compose.
The names below are imported on first use, so importing `checkpoint_formats` does not import torch.
"""

_LAZY = {"KV_CACHE_DTYPES": ".config", "QUANT_METHODS": ".config", "KVCacheDtype": ".config",
         "WeightQuantConfig": ".config", "kv_cache_dtype": ".config", "WeightReport": ".apply",
         "quantize_model": ".apply"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'engine.quantization' has no attribute {name!r}")
