"""AWQ's packed int4 checkpoints ("gemm" version, AutoAWQ / vLLM) as the grouped int4 format of `int4.py`.

An AWQ linear [out N, in K] with group size g is stored as three tensors:

    qweight int32 [K, N / 8]      eight 4-bit codes per int32 along the outputs, nibble i (bits 4i..4i+3) of
                                  column j holding output 8j + ORDER[i], ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
    qzeros  int32 [K / g, N / 8]  the zero points, packed the same way
    scales  fp16  [K / g, N]
    w[n, k] = (q[k, n] - z[k / g, n]) * s[k / g, n]

and `int4.py`'s format is w = (q - 8) * scale + zero per output channel and group, so the mapping is

    codes = q (transposed to [N, K]),  scale = s,  zero = (8 - z) * s

exact in fp32: (q - 8) s and (8 - z) s are small integers times an fp16 value, and their sum rounds the exact
(q - z) s, itself representable.

Loading: a checkpoint whose config declares `quantization_config.quant_method == "awq"` (4 bits, zero
points, "gemm") gets quantization "awq" by itself; the loader leaves the projections' packed tensors alone
(`load_safetensors(prepacked=True)`) and `apply.quantize_model` builds each projection with
`Int4Linear.from_codes` from them (`AWQCheckpoint`), stacking q/k/v and gate/up by output rows.
"""

from __future__ import annotations

import glob
import os
import re

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # output channel (within 8) held by nibble i
AWQ_UNORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # nibble holding output channel c (within 8)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, N / 8] -> int32 [R, N] of 0..15, outputs in their natural order."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nibbles = (packed[..., None] >> shifts) & 15  # [R, N / 8, 8]: nibble i
    return nibbles[..., list(AWQ_UNORDER)].reshape(packed.shape[0], -1)


def int4_from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ tensors -> (codes int32 [N, K], scales fp32 [N, K / g], zeros fp32 [N, K / g]) for
    `Int4Linear.from_codes(..., group_size=group_size)`."""
    k = qweight.shape[0]
    if k % group_size or qzeros.shape[0] != k // group_size or scales.shape != (k // group_size, qweight.shape[1] * 8):
        raise ValueError(f"quantization: AWQ tensors do not fit together: qweight {tuple(qweight.shape)}, qzeros "
                         f"{tuple(qzeros.shape)}, scales {tuple(scales.shape)}, group_size {group_size}")
    codes = unpack_awq(qweight).t().contiguous()
    s = scales.float().t().contiguous()
    z = unpack_awq(qzeros).t().float()
    return codes, s, (8.0 - z) * s


def awq_config(model, requested: str | None, tensor_parallel_size: int):
    """The `WeightQuantConfig` of an AWQ checkpoint (ValueError naming quantization if it cannot run)."""
    from .config import INT4_GROUP_SIZES, WeightQuantConfig

    qc = getattr(model.hf_config, "quantization_config", None) or {}
    if qc.get("quant_method") != "awq":
        raise ValueError("quantization: 'awq' needs a checkpoint whose config declares quant_method 'awq'")
    if requested not in (None, "awq"):
        raise ValueError(f"quantization: the checkpoint is already AWQ-quantized; {requested!r} cannot apply "
                         "(leave quantization unset)")
    version = str(qc.get("version", "gemm")).lower()
    if qc.get("bits", 4) != 4 or not qc.get("zero_point", True) or version != "gemm":
        raise ValueError(f"quantization: AWQ with bits={qc.get('bits')}, zero_point={qc.get('zero_point')}, "
                         f"version={version!r} is not supported (4-bit, zero points, 'gemm' only)")
    group = int(qc.get("group_size", 128))
    if group not in INT4_GROUP_SIZES:
        raise ValueError(f"quantization: AWQ group_size {group} is not one the int4 kernel takes {INT4_GROUP_SIZES}")
    if tensor_parallel_size != 1:
        raise ValueError("quantization: AWQ checkpoints are not supported with tensor_parallel_size > 1 yet")
    return WeightQuantConfig("awq", group, source=str(model.path))


FUSED = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o_proj": ("self_attn.o_proj",),
         "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"), "down_proj": ("mlp.down_proj",)}


class AWQCheckpoint:
    """The packed projections of an AWQ safetensors checkpoint, as int4 (codes, scales, zeros) per layer."""

    method = "awq"

    def __init__(self, path: str, group_size: int):
        from safetensors import safe_open

        self.group_size = group_size
        self._where: dict[str, str] = {}
        for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            with safe_open(file, framework="pt", device="cpu") as f:
                for key in f.keys():
                    if m := re.search(r"layers\.(\d+)\.(.+)\.(qweight|qzeros|scales)$", key):
                        self._where[f"{m.group(1)}.{m.group(2)}.{m.group(3)}"] = (file, key)

    def _read(self, layer: int, module: str, what: str) -> torch.Tensor:
        from safetensors import safe_open

        found = self._where.get(f"{layer}.{module}.{what}")
        if found is None:
            raise ValueError(f"quantization: the AWQ checkpoint has no {what} for layer {layer}'s {module}")
        with safe_open(found[0], framework="pt", device="cpu") as f:
            return f.get_tensor(found[1])

    def projection(self, layer: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pieces = [int4_from_awq(*(self._read(layer, m, w) for w in ("qweight", "qzeros", "scales")), self.group_size)
                  for m in FUSED[name]]
        return tuple(torch.cat(p, dim=0) for p in zip(*pieces))
