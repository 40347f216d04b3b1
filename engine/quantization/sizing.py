"""Weight bytes from the model's shape alone: what quantization saves, identically on every rank.

The runner also measures the bytes of the model it built (`apply.WeightReport`); this module predicts the
same numbers from the config, so tensor-parallel ranks, which each hold a different shard, agree on the
saving without talking to each other (on the CPU the saving is added to the KV-cache budget), and so
`kvserve plan` can count quantized weights.
"""

from __future__ import annotations

import torch

from .config import WeightQuantConfig


def projection_shapes(num_layers: int, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int,
                      intermediate: int) -> list[tuple[int, int]]:
    """(out_features, in_features) of every quantized projection of the whole (unsharded) model."""
    q, kv = num_heads * head_dim, num_kv_heads * head_dim
    per_layer = [(q + 2 * kv, hidden), (hidden, q), (2 * intermediate, hidden), (hidden, intermediate)]
    return per_layer * num_layers


def quantized_bytes(out_features: int, in_features: int, cfg: WeightQuantConfig, dtype: torch.dtype,
                    kernel_copy: bool = False) -> int:
    """Bytes of one projection's weight in `cfg`'s format (codes + scales; a bias is not counted); `dtype`
    is the scales' dtype (bf16 on the CPU, the model's dtype elsewhere: int8.kernel_dtype). `kernel_copy`:
    w8a8 layers also hold the C kernel's plain copy of their codes, float32 scales and int32 code sums
    (`W8A8Linear.use_cpu_kernel`)."""
    item = torch.empty((), dtype=dtype).element_size()
    if cfg.method == "int8":
        return out_features * in_features + out_features * item  # a scale per output channel, in the model dtype
    if cfg.method == "int4" or cfg.method == "gguf" or cfg.prepacked:  # gguf: Q4 blocks as int4, group 32
        groups = in_features // cfg.group_size
        return out_features * in_features // 2 + out_features * groups * 2 * item  # scale and zero per group
    packed = out_features * in_features + out_features * 4  # fp8, w8a8: an fp32 scale per output channel
    return 2 * packed + out_features * 4 if kernel_copy and cfg.method == "w8a8" else packed


def bytes_saved(mc, cfg: WeightQuantConfig | None, scale_dtype: torch.dtype = torch.bfloat16,
                kernel_copy: bool = False) -> int:
    """Weight bytes `cfg` frees for model config `mc` (an `engine.config.ModelConfig`) on the CPU, whose
    quantized kernels keep their scales in `scale_dtype`. An int8 LM head (`cfg.lm_head`) frees the fp head
    when it is untied and costs its int8 copy when it is tied (the embedding stays for the lookup).
    `kernel_copy`: w8a8 layers hold the C kernel's copy of their codes too (`quantized_bytes`)."""
    if cfg is None:
        return 0
    inter = mc.hf_config.intermediate_size
    item = torch.empty((), dtype=mc.dtype).element_size()
    shapes = projection_shapes(mc.num_layers, mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.head_dim, inter)
    if cfg.method == "gguf":  # each projection as its file stores it: Q4 -> int4 (group 32), Q8_0 -> grouped int8
        from pathlib import Path

        from .gguf_int4 import FUSED, GGUFProjections

        blocks, names = GGUFProjections(Path(cfg.source)), list(FUSED) * mc.num_layers
        kinds = [blocks.kind(j // len(FUSED), name) for j, name in enumerate(names)]
        return sum(o * i * item - (o * i + o * (i // 32) * 4 if kind == "int8" else quantized_bytes(o, i, cfg, mc.dtype))
                   for (o, i), kind in zip(shapes, kinds))
    if cfg.prepacked:  # pre-quantized int4 keeps its exact scales in the model's dtype (Int4Linear.from_codes)
        return sum(o * i * item - quantized_bytes(o, i, cfg, mc.dtype) for o, i in shapes)
    saved = sum(o * i * item - quantized_bytes(o, i, cfg, scale_dtype, kernel_copy) for o, i in shapes)
    if cfg.quantizes_lm_head:
        head = quantized_bytes(mc.vocab_size, mc.hidden_size, WeightQuantConfig("w8a8" if cfg.method == "w8a8" else "int8"),
                               scale_dtype, kernel_copy)
        tied = bool(getattr(mc.hf_config, "tie_word_embeddings", False))
        saved += (0 if tied else mc.vocab_size * mc.hidden_size * item) - head
    return saved
