"""Pre-quantized int4 checkpoints (AWQ, GPTQ, compressed-tensors) as `Int4Linear` layers: what the three share.

Every format stores, per projection [out N, in K] and group of g input columns, 4-bit codes q, a scale s and a
(possibly implicit) zero point z with w = (q - z) * s, and `int4.py`'s format is w = (q - 8) * scale + zero, so

    codes = q,  scale = s,  zero = (8 - z) * s          (`from_zero_points`)

exact in fp32: (q - 8) s and (8 - z) s are small integers times an fp16/bf16 value, and their sum rounds the
exact (q - z) s, itself representable. The formats differ only in how q and z are packed into int32 (eight
nibbles a word, along the inputs or the outputs, in natural or AWQ's interleaved order) and in the names of
their tensors; each format's module turns its tensors into (codes [N, K], scales [N, K / g], zeros [N, K / g]).

Here: the engine's config for such a checkpoint (`prepacked_config`, after `checkpoint_formats` has read and
checked what it declares), the nibble unpacking, and `PrepackedCheckpoint`, which finds the
tensors of layer i's module in the safetensors files, converts them with the format's module, stacks q/k/v and
gate/up by output rows and repeats scales to the kernel group (`CheckpointFormat.kernel_group`).
The loader leaves these tensors alone (`load_safetensors(prepacked=True)`) and `apply.quantize_model` builds
each projection from `projection(layer, name)` with `Int4Linear.from_codes`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Callable

import torch

from .checkpoint_formats import LABELS, CheckpointFormat, checkpoint_format, in_features

FUSED = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o_proj": ("self_attn.o_proj",),
         "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"), "down_proj": ("mlp.down_proj",)}

Int4Codes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # codes int32 [N, K], scales, zeros fp32 [N, K / g]
Read = Callable[..., torch.Tensor | None]  # read(tensor name, required=True): one module's tensor


def unpack_nibbles(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 with eight 4-bit values a word, value i in bits 4i..4i+3, along `dim` (0 or 1) -> int32 0..15,
    `dim` eight times longer: word j of `dim` holds entries 8j..8j+7."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    if dim == 0:
        return ((packed[:, None, :] >> shifts[None, :, None]) & 15).reshape(-1, packed.shape[1])
    return ((packed[:, :, None] >> shifts) & 15).reshape(packed.shape[0], -1)


def from_zero_points(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> Int4Codes:
    """w = (q - z) * s with codes [N, K], scales [N, G] and zero points [N, G] (integers) -> `Int4Codes`."""
    s = scales.float().contiguous()
    return codes.to(torch.int32).contiguous(), s, (8.0 - zeros.float()) * s


def source_group(k: int, group_size: int | None) -> int:
    """Input columns per scale in the checkpoint: `group_size`, or all k for one scale per output channel."""
    return k if group_size is None else group_size


def misfit(label: str, group_size: int | None, **tensors: torch.Tensor) -> ValueError:
    """The error for tensors whose shapes do not fit together (or the declared group size)."""
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
    return ValueError(f"quantization: {label} tensors do not fit together: {shapes}, group_size {group_size}")


def check_trivial_g_idx(label: str, g_idx: torch.Tensor | None, k: int, group: int) -> None:
    """Act-order checkpoints assign input k to group g_idx[k]; only the plain k // group is supported."""
    if g_idx is not None and not torch.equal(g_idx.long().cpu(), torch.arange(k) // group):
        raise ValueError(f"quantization: {label} act-order (desc_act / actorder) with a g_idx other than "
                         "k // group_size is not supported")


def regroup(codes: Int4Codes, kernel_group: int) -> Int4Codes:
    """The same weights with `kernel_group` columns per scale: each scale and zero repeated (exact)."""
    q, s, z = codes
    repeat = q.shape[1] // s.shape[1] // kernel_group
    if repeat == 1:
        return codes
    return q, s.repeat_interleave(repeat, dim=1), z.repeat_interleave(repeat, dim=1)


def prepacked_config(model, fmt: CheckpointFormat, tensor_parallel_size: int):
    """The `WeightQuantConfig` of a pre-quantized checkpoint (`ModelConfig` `model`) whose config declares `fmt`
    (`checkpoint_formats.declared_format`); ValueError naming quantization if it cannot run."""
    from .config import WeightQuantConfig

    if tensor_parallel_size != 1:
        raise ValueError(f"quantization: {LABELS[fmt.method]} checkpoints are not supported with "
                         "tensor_parallel_size > 1 yet")
    return WeightQuantConfig(fmt.method, fmt.kernel_group(in_features(model.hf_config)), source=str(model.path))


def _unpacker(method: str) -> tuple[tuple[str, ...], Callable[[Read, CheckpointFormat], Int4Codes]]:
    if method == "awq":
        from .awq import TENSORS, unpack_module
    elif method == "gptq":
        from .gptq import TENSORS, unpack_module
    else:
        from .compressed_tensors import TENSORS, unpack_module
    return TENSORS, unpack_module


class PrepackedCheckpoint:
    """The packed projections of a pre-quantized safetensors checkpoint, as `Int4Codes` per layer."""

    def __init__(self, path: str, kernel_group: int):
        from safetensors import safe_open

        with open(os.path.join(path, "config.json")) as f:
            self.format = checkpoint_format(json.load(f).get("quantization_config") or {})
        self.method, self.group_size = self.format.method, kernel_group
        self._label = LABELS[self.method]
        names, self._unpack = _unpacker(self.method)
        pattern = re.compile(rf"layers\.(\d+)\.(.+)\.({'|'.join(names)})$")
        self._where: dict[str, tuple[str, str]] = {}
        for file in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            with safe_open(file, framework="pt", device="cpu") as f:
                for key in f.keys():
                    if m := pattern.search(key):
                        self._where[f"{m.group(1)}.{m.group(2)}.{m.group(3)}"] = (file, key)

    def _read(self, layer: int, module: str, what: str, required: bool = True) -> torch.Tensor | None:
        from safetensors import safe_open

        found = self._where.get(f"{layer}.{module}.{what}")
        if found is None:
            if not required:
                return None
            raise ValueError(f"quantization: the {self._label} checkpoint has no {what} for layer {layer}'s {module}")
        with safe_open(found[0], framework="pt", device="cpu") as f:
            return f.get_tensor(found[1])

    def projection(self, layer: int, name: str) -> Int4Codes:
        pieces = [self._unpack(lambda what, required=True, m=m: self._read(layer, m, what, required), self.format)
                  for m in FUSED[name]]
        return regroup(tuple(torch.cat(p, dim=0) for p in zip(*pieces)), self.group_size)
