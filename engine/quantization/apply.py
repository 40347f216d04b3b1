"""Swap a loaded model's projections for quantized ones, and count the weight bytes before and after.

Quantized: every decoder layer's fused q/k/v, o, fused gate/up and down projections (~79% of SmolLM2-135M's
weights, all but the embedding; ~97% of an 8B model's). With int8, int4 and w8a8 the LM head is also read in int8
(one scale per vocabulary row), as llama.cpp's quantized files do: in a small model it is a large share of
the bytes each decode step reads (SmolLM2-135M: 28M of 135M weights, 51% of the step's weight bytes once
the layers are int4); a tied head keeps its fp embedding for the lookup beside the int8 copy, which the
weight report counts. `quantize_lm_head=False` keeps it at the model's dtype (vLLM's and torchao's default);
`kvserve eval-ppl` measures both. Kept in the model's dtype: the embedding, norms and biases.

Under tensor parallelism this runs on each rank after its shard is loaded, so every rank quantizes the rows
(column-parallel) or columns (row-parallel) it holds. Per-output-channel int8 and fp8 scales of a
column-parallel layer are then exactly the unsharded model's; a row-parallel layer's scale covers the rank's
input columns only (a finer grouping, never a coarser one), and int4 groups never straddle two ranks because
the group size must divide each rank's share of the input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from .checkpoint_formats import PREPACKED_METHODS
from .config import WeightQuantConfig
from .fp8 import Fp8Linear
from .int4 import Int4Linear
from .int8 import Int8Linear
from .w8a8 import W8A8Linear

logger = logging.getLogger(__name__)

QUANTIZED_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class WeightReport:
    """Bytes of the model's weights (parameters and buffers) before and after quantization."""

    method: str | None
    bytes_before: int
    bytes_after: int

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def describe(self) -> str:
        if self.method is None:
            return f"weights: {self.bytes_after / 2**20:.1f} MiB"
        return (f"weights: {self.bytes_after / 2**20:.1f} MiB {self.method} "
                f"(from {self.bytes_before / 2**20:.1f} MiB; {self.bytes_saved / 2**20:.1f} MiB saved)")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers (each once), plus weights packed outside them (W8A8's)."""
    seen, total = set(), sum(getattr(m, "packed_bytes", 0) for m in model.modules())
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:  # a tied LM head is the embedding: count it once
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


class QuantRowParallel(nn.Module):
    """A row-parallel projection over a quantized local matmul: y = all_reduce(x_local @ Wq_local^T) + b."""

    def __init__(self, inner: nn.Module, bias: torch.Tensor | None, tp):
        super().__init__()
        self.inner, self.tp = inner, tp
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.comm.all_reduce(self.inner(x).contiguous())
        return y if self.bias is None else y.add_(self.bias)


def _prequantized(name: str, mod: nn.Module, parent: nn.Module, blocks) -> nn.Module:
    """The projection built from a pre-quantized source: a GGUF file's Q4 / Q8_0 blocks, or an AWQ / GPTQ /
    compressed-tensors checkpoint's packed int4 tensors (`prepacked.py`). Either way no dense weight was read
    (`WeightQuantConfig.projections_from_source`): `mod.weight` is uninitialised storage, used for its shape."""
    from .gguf_int4 import layer_index

    kind = name.rsplit(".", 1)[-1]
    layer = layer_index(name)
    if blocks.method in PREPACKED_METHODS:
        codes = blocks.projection(layer, kind)
    else:
        heads = (parent.num_heads, parent.num_kv_heads) if kind == "qkv_proj" else (0, 0)
        codes = blocks.projection(layer, kind, *heads)
    if codes[0].shape != mod.weight.shape:
        raise ValueError(f"quantization: the {blocks.method} tensors of {name} are {tuple(codes[0].shape)}, "
                         f"the model's weight {tuple(mod.weight.shape)}")
    if blocks.method in PREPACKED_METHODS:
        return Int4Linear.from_codes(*codes, group_size=blocks.group_size, bias=mod.bias, dtype=mod.weight.dtype,
                                     device=mod.weight.device)
    if blocks.kind(layer, kind) == "int8":  # Q8_0
        from .int8_grouped import GroupedInt8Linear

        return GroupedInt8Linear(*codes, bias=mod.bias, dtype=mod.weight.dtype, device=mod.weight.device)
    return Int4Linear.from_codes(*codes, group_size=32, bias=mod.bias, dtype=mod.weight.dtype,
                                 device=mod.weight.device)


def _quantized(weight: torch.Tensor, bias: torch.Tensor | None, cfg: WeightQuantConfig) -> nn.Module:
    if cfg.method == "int8":
        return Int8Linear(weight, bias)
    if cfg.method == "int4":
        return Int4Linear(weight, bias, cfg.group_size)
    if cfg.method == "w8a8":
        return W8A8Linear(weight, bias)
    return Fp8Linear(weight, bias)


@torch.no_grad()
def quantize_model(model: nn.Module, cfg: WeightQuantConfig | None) -> WeightReport:
    """Replace the projections of `model` in place; the full-precision weights are freed as each is replaced."""
    before = weight_bytes(model)
    if cfg is None:
        return WeightReport(None, before, before)
    targets = [(name, mod) for name, mod in model.named_modules() if name.rsplit(".", 1)[-1] in QUANTIZED_PROJECTIONS]
    blocks = None
    if cfg.method == "gguf":
        from pathlib import Path

        from .gguf_int4 import GGUFProjections

        blocks = GGUFProjections(Path(cfg.source))
    elif cfg.prepacked:
        from .prepacked import PrepackedCheckpoint

        blocks = PrepackedCheckpoint(cfg.source, cfg.group_size)
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        tp = getattr(mod, "tp", None)
        if blocks is not None:
            new = _prequantized(name, mod, parent, blocks)
        elif tp is not None:  # row-parallel: quantize the local columns, keep the all-reduce and the bias after it
            new = QuantRowParallel(_quantized(mod.weight, None, cfg), mod.bias, tp)
        else:
            new = _quantized(mod.weight, mod.bias, cfg)
        setattr(parent, child, new)
        del mod
    if cfg.quantizes_lm_head:
        quantize_lm_head(model, W8A8Linear if cfg.method == "w8a8" else Int8Linear)
    report = WeightReport(cfg.method, before, weight_bytes(model))
    return report


def quantize_lm_head(model: nn.Module, kind: type[nn.Module] = Int8Linear) -> None:
    """Give the model an int8 LM head (`model.quant_head`, which `compute_logits` uses when set; `kind`:
    weight-only `Int8Linear` or `W8A8Linear`); an untied head's full-precision weight is freed, a tied one
    stays as the embedding."""
    tied = getattr(model, "tie_word_embeddings", False)
    weight = model.embed_tokens.weight if tied else model.lm_head.weight
    model.quant_head = kind(weight, None)
    if not tied:
        del model.lm_head
