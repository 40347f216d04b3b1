"""Pre-quantized int4 checkpoints made by hand from a tiny HF model, in each format's documented packing.

`quantize` picks 4-bit codes q [N, K], zero points z and fp16/bf16 scales s [N, K / g] for a weight (min/max
per group, or symmetric with z = 8); `write_checkpoint` stores every decoder projection in a format's tensors
(`pack_awq` / `pack_gptq` / `pack_compressed`, written from the formats' own descriptions: AutoAWQ's and
AutoGPTQ's packing loops, compressed-tensors' pack_to_int32) with the format's quantization_config, and
beside it a dense "reference" checkpoint whose projections are the dequantized (q - z) * s in fp32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble i of a word holds output 8j + AWQ_ORDER[i]


def quantize(w: torch.Tensor, group: int | None, symmetric: bool = False, min_zero: int = 0,
             scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int32 [N, K] in 0..15, z int32 [N, G], s [N, G] in `scale_dtype`) with w ~ (q - z) s; `group`
    None: one group per output channel; `min_zero`: the smallest zero point allowed (GPTQ v1 cannot store 0)."""
    n, k = w.shape
    g = k if group is None else group
    wg = w.float().reshape(n, k // g, g)
    if symmetric:
        s = (wg.abs().amax(-1) * 2 / 15).clamp(min=1e-5).to(scale_dtype)
        z = torch.full(s.shape, 8, dtype=torch.int32)
    else:
        lo, hi = wg.amin(-1), wg.amax(-1)
        s = ((hi - lo) / 15).clamp(min=1e-5).to(scale_dtype)
        z = torch.round(-lo / s.float()).clamp(min_zero, 15).to(torch.int32)
    q = (torch.round(wg / s.float()[..., None]) + z[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), z, s


def random_codes(n: int, k: int, groups: int, seed: int, min_zero: int = 0, symmetric: bool = False,
                 scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (q [N, K] in 0..15, z [N, groups] in min_zero..15, or 8 when symmetric, s [N, groups])."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g)
    z = torch.full((n, groups), 8) if symmetric else torch.randint(min_zero, 16, (n, groups), generator=g)
    s = (torch.rand(n, groups, generator=g) * 0.02 + 1e-3).to(scale_dtype)
    return q, z, s


def dequantize(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(q - z) * s in fp32, [N, K]."""
    g = q.shape[1] // s.shape[1]
    return ((q - z.repeat_interleave(g, 1)).float() * s.float().repeat_interleave(g, 1))


def words(values: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """int [R, C] of 0..15 -> int32 [R, C / 8]: word j of a row holds entries 8j + order[i] in bits 4i..4i+3."""
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int32)
    for j in range(values.shape[1] // 8):
        for i, c in enumerate(order):
            packed[:, j] |= (values[:, 8 * j + c].to(torch.int32) & 15) << (4 * i)
    return packed


def pack_awq(q, z, s) -> dict[str, torch.Tensor]:
    """AutoAWQ "gemm": [in, out] layouts, eight outputs a word in AWQ's interleaved order."""
    return {"qweight": words(q.t(), AWQ_ORDER), "qzeros": words(z.t(), AWQ_ORDER), "scales": s.t().contiguous()}


def pack_gptq(q, z, s, zero_offset: int = 1) -> dict[str, torch.Tensor]:
    """AutoGPTQ: codes eight inputs a word (qweight [K / 8, N]), zero points minus `zero_offset` (v1: 1)
    eight outputs a word (qzeros [K / g, N / 8]), scales [K / g, N], g_idx = k // g."""
    k = q.shape[1]
    g = k // s.shape[1]
    return {"qweight": words(q).t().contiguous(), "qzeros": words((z - zero_offset).t()),
            "scales": s.t().contiguous(), "g_idx": (torch.arange(k) // g).to(torch.int32)}


def pack_compressed(q, z, s, symmetric: bool) -> dict[str, torch.Tensor]:
    """compressed-tensors pack-quantized: signed codes + 8 eight inputs a word (weight_packed [N, K / 8]);
    asymmetric zero points (signed, + 8) eight outputs a word (weight_zero_point [N / 8, K / g])."""
    out = {"weight_packed": words(q), "weight_scale": s.contiguous(),
           "weight_shape": torch.tensor(list(q.shape), dtype=torch.int64)}
    if not symmetric:
        out["weight_zero_point"] = words(z.t()).t().contiguous()
    return out


Pack = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def write_checkpoint(src: str, dst: Path, quant_config: dict, pack: Pack, group: int | None, **quantize_kw
                     ) -> tuple[str, str]:
    """(pre-quantized dir, dense reference dir) made from the HF checkpoint at `src`."""
    from safetensors.torch import load_file, save_file

    state = load_file(f"{src}/model.safetensors")
    packed, reference = {k: v for k, v in state.items() if not k.endswith("_proj.weight")}, dict(state)
    for key, w in state.items():
        if key.endswith("_proj.weight"):
            q, z, s = quantize(w, group, **quantize_kw)
            prefix = key[:-len(".weight")]
            packed.update({f"{prefix}.{name}": t for name, t in pack(q, z, s).items()})
            reference[key] = dequantize(q, z, s)
    for out, tensors in ((dst / "quantized", packed), (dst / "reference", reference)):
        shutil.copytree(src, out)
        save_file(tensors, str(out / "model.safetensors"))
    cfg = json.loads((dst / "quantized" / "config.json").read_text())
    cfg["quantization_config"] = quant_config
    (dst / "quantized" / "config.json").write_text(json.dumps(cfg))
    return str(dst / "quantized"), str(dst / "reference")


def set_quant_config(path: str, **changes) -> None:
    """Edit a written checkpoint's quantization_config in place (a None value removes the key)."""
    p = Path(path) / "config.json"
    cfg = json.loads(p.read_text())
    qc = cfg["quantization_config"]
    for key, value in changes.items():
        if value is None:
            qc.pop(key, None)
        else:
            qc[key] = value
    p.write_text(json.dumps(cfg))


def awq_config(group: int | None) -> dict:
    return {"quant_method": "awq", "bits": 4, "group_size": group or -1, "zero_point": True, "version": "gemm"}


def gptq_config(group: int | None, sym: bool, checkpoint_format: str = "gptq") -> dict:
    return {"quant_method": "gptq", "bits": 4, "group_size": group or -1, "sym": sym, "desc_act": False,
            "checkpoint_format": checkpoint_format}


def compressed_config(group: int | None, symmetric: bool) -> dict:
    weights = {"num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": "group" if group else "channel",
               "group_size": group, "dynamic": False, "actorder": None, "observer": "minmax"}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ["lm_head"], "kv_cache_scheme": None, "sparsity_config": {}}


# name -> (quantization_config, packer, group, quantize keywords): one checkpoint of each kind the tests load
CHECKPOINTS = {
    "awq-g32": (awq_config(32), pack_awq, 32, {}),
    "gptq-v1-sym-g32": (gptq_config(32, True), pack_gptq, 32, {"symmetric": True}),
    "gptq-v1-asym-g64": (gptq_config(64, False), pack_gptq, 64, {"min_zero": 1}),
    "gptq-v2-asym-per-channel": (gptq_config(None, False, "gptq_v2"), lambda q, z, s: pack_gptq(q, z, s, 0), None, {}),
    "ct-sym-g32-bf16": (compressed_config(32, True), lambda q, z, s: pack_compressed(q, z, s, True), 32,
                        {"symmetric": True, "scale_dtype": torch.bfloat16}),
    "ct-asym-channel": (compressed_config(None, False), lambda q, z, s: pack_compressed(q, z, s, False), None, {}),
}


def checkpoint(name: str, src: str, dst: Path) -> tuple[str, str]:
    """The `CHECKPOINTS` entry `name` written from the HF model at `src`: (quantized dir, reference dir)."""
    qc, pack, group, kw = CHECKPOINTS[name]
    return write_checkpoint(src, dst, qc, pack, group, **kw)
