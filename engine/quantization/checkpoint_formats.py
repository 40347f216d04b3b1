"""What a pre-quantized checkpoint's `quantization_config` declares, checked against what kvserve loads.

Three int4 formats, each read by its own module and mapped onto `int4.py`'s grouped format:

    awq (awq.py)         AutoAWQ "gemm": 4 bits, zero points
    gptq (gptq.py)       AutoGPTQ / GPTQModel: 4 bits, sym or not, v1 ("gptq": zero points stored minus one)
                         or v2 ("gptq_v2"), no act-order reordering
    compressed-tensors   llm-compressor's "pack-quantized" (compressed_tensors.py): 4-bit int weights, group or
                         channel strategy, symmetric or with zero points, weight-only, LM head not quantized

Only plain dicts and ints here (no tensors): `CheckpointFormat` is what the tensor readers need besides the
tensors, and `kernel_group` the int4 group the layers are built with. A checkpoint group the CPU kernel does
not take (per output channel, or e.g. 512) is built with the largest kernel group that tiles it, its scale and
zero repeated over the smaller groups: the same weights exactly, a few more scales in memory. Everything not
supported is refused with a ValueError naming `quantization`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

PREPACKED_METHODS = ("awq", "gptq", "compressed-tensors")
LABELS = {"awq": "AWQ", "gptq": "GPTQ", "compressed-tensors": "compressed-tensors"}
KERNEL_GROUP_SIZES = (32, 64, 128, 256)  # what the CPU int4 kernel takes (config.INT4_GROUP_SIZES)
CT_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # Llama-family module names in HF checkpoints


@dataclass(frozen=True)
class CheckpointFormat:
    """How one checkpoint stores its projections. `group_size`: input columns per scale, None = one scale
    per output channel; `zero_offset`: added to each stored zero point (GPTQ v1 stores z - 1)."""

    method: str
    group_size: int | None
    zero_offset: int = 0

    def kernel_group(self, in_features: Iterable[int]) -> int:
        """The int4 group the layers are built with: the checkpoint's when the kernel takes it, else the
        largest kernel group that tiles it (per channel: that tiles every projection input)."""
        sizes = list(in_features) if self.group_size is None else [self.group_size]
        fits = [g for g in KERNEL_GROUP_SIZES if all(k % g == 0 for k in sizes)]
        if not fits:
            what = "per-channel scales over inputs" if self.group_size is None else "group_size"
            raise ValueError(f"quantization: {LABELS[self.method]} {what} {sizes} cannot be built with any int4 "
                             f"kernel group {KERNEL_GROUP_SIZES} (none divides it)")
        return max(fits)


def declared_format(hf_config, requested: str | None) -> CheckpointFormat | None:
    """The pre-quantized format a model config's `quantization_config` declares (None: none of them), with
    `requested` (the `quantization` option) checked against it: it may only name that same format."""
    qc = getattr(hf_config, "quantization_config", None) or {}
    declared = qc.get("quant_method")
    if declared not in PREPACKED_METHODS:
        if requested in PREPACKED_METHODS:
            raise ValueError(f"quantization: {requested!r} needs a checkpoint whose config declares quant_method "
                             f"{requested!r}")
        return None
    if requested not in (None, declared):
        raise ValueError(f"quantization: the checkpoint is already {LABELS[declared]}-quantized; {requested!r} "
                         "cannot apply (leave quantization unset)")
    return checkpoint_format(qc)


def in_features(hf_config) -> list[int]:
    """Every projection input of a (Llama-family) model config: hidden size, query heads x head_dim, MLP width."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return [hf_config.hidden_size, heads * head_dim, hf_config.intermediate_size]


def checkpoint_format(qc: dict) -> CheckpointFormat:
    """The `CheckpointFormat` of a `quantization_config` dict (ValueError naming quantization if unsupported)."""
    method = qc.get("quant_method")
    if method == "awq":
        return _awq(qc)
    if method == "gptq":
        return _gptq(qc)
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    raise ValueError(f"quantization: the checkpoint declares quant_method {method!r}; the pre-quantized formats "
                     f"kvserve loads are {PREPACKED_METHODS}")


def _group(method: str, value) -> int | None:
    group = int(value if value is not None else -1)
    if group == -1:
        return None
    if group <= 0:
        raise ValueError(f"quantization: {LABELS[method]} group_size {group} is not a positive size or -1")
    return group


def _awq(qc: dict) -> CheckpointFormat:
    version = str(qc.get("version", "gemm")).lower()
    if qc.get("bits", 4) != 4 or not qc.get("zero_point", True) or version != "gemm":
        raise ValueError(f"quantization: AWQ with bits={qc.get('bits')}, zero_point={qc.get('zero_point')}, "
                         f"version={version!r} is not supported (4-bit, zero points, 'gemm' only)")
    return CheckpointFormat("awq", _group("awq", qc.get("group_size", 128)))


GPTQ_VERSIONS = {"gptq": 1, "gptq_v2": 0}  # checkpoint_format -> what is added to each stored zero point


def _gptq(qc: dict) -> CheckpointFormat:
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    if qc.get("bits", 4) != 4:
        raise ValueError(f"quantization: GPTQ with bits={qc.get('bits')} is not supported (4-bit only)")
    if fmt not in GPTQ_VERSIONS or qc.get("is_marlin_format"):
        raise ValueError(f"quantization: GPTQ checkpoint_format {fmt!r} is not supported (one of "
                         f"{tuple(GPTQ_VERSIONS)}; Marlin-packed checkpoints are not)")
    if qc.get("lm_head"):
        raise ValueError("quantization: GPTQ with a quantized LM head (lm_head: true) is not supported")
    if qc.get("dynamic"):
        raise ValueError("quantization: GPTQ with per-module overrides (dynamic) is not supported")
    # desc_act: the act-order permutation lives in each g_idx; a trivial one (k // g) is checked per tensor
    return CheckpointFormat("gptq", _group("gptq", qc.get("group_size", 128)), GPTQ_VERSIONS[fmt])


def _compressed_tensors(qc: dict) -> CheckpointFormat:
    def refuse(why: str) -> ValueError:
        return ValueError(f"quantization: compressed-tensors {why} is not supported")

    status = qc.get("quantization_status", "compressed")
    if status != "compressed":
        raise refuse(f"quantization_status {status!r} (only 'compressed' checkpoints)")
    if (qc.get("sparsity_config") or {}).get("format", "dense") != "dense":
        raise refuse("sparsity")
    if qc.get("kv_cache_scheme"):
        raise refuse("kv_cache_scheme (a quantized KV cache's checkpoint scales)")
    groups = list((qc.get("config_groups") or {}).values())
    if not groups:
        raise refuse("a config without config_groups")
    weights = []
    for g in groups:
        fmt = g.get("format") or qc.get("format")
        if fmt != "pack-quantized":
            raise refuse(f"format {fmt!r} (only 'pack-quantized')")
        if g.get("input_activations") or g.get("output_activations"):
            raise refuse("activation quantization (weight-only schemes only)")
        w = g.get("weights") or {}
        if w.get("num_bits") != 4 or w.get("type", "int") != "int" or w.get("strategy") not in ("group", "channel"):
            raise refuse(f"weights num_bits={w.get('num_bits')}, type={w.get('type')!r}, strategy="
                         f"{w.get('strategy')!r} (4-bit int, group or channel strategy only)")
        if w.get("dynamic") or w.get("block_structure"):
            raise refuse("dynamic or block-structured weight scales")
        weights.append((w.get("strategy"), w.get("group_size") if w.get("strategy") == "group" else -1))
    if len(set(weights)) != 1:
        raise refuse(f"a mix of weight schemes {sorted(set(weights), key=str)}")
    targets = [t for g in groups for t in g.get("targets") or []]
    ignore = list(qc.get("ignore") or [])
    for module in CT_PROJECTIONS:
        name = f"model.layers.0.{module}"
        if not _matches(targets, name, "Linear") or _matches(ignore, name, "Linear"):
            raise refuse(f"a checkpoint leaving {module} unquantized (targets {targets}, ignore {ignore})")
    if _matches(targets, "lm_head", "Linear") and not _matches(ignore, "lm_head", "Linear"):
        raise refuse("a quantized LM head (add 'lm_head' to ignore)")
    return CheckpointFormat("compressed-tensors", _group("compressed-tensors", weights[0][1]))


def _matches(patterns: list[str], name: str, class_name: str) -> bool:
    """compressed-tensors' target rule: a layer class name, an exact module name, or 're:' and a regex
    matched from the start of the module name."""
    for p in patterns:
        if p == class_name or p == name or (p.startswith("re:") and re.match(p[3:], name)):
            return True
    return False
