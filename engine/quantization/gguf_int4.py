"""`quantization="gguf"`: run a GGUF model's 4-bit projections from the file's own Q4_0 / Q4_1 blocks.

kvserve loads a GGUF file through the HF directory it converts it to once (`engine.models.resolve`: weights
dequantized to fp32 by transformers). With `quantization="gguf"` each decoder projection is then replaced by
an int4 layer whose codes, scales and zeros are the file's blocks (`gguf_blocks.py`: an exact mapping, so the
layer's weights are the converted fp32 weights bit for bit, with no requantization error on top of the file's),
multiplied by PyTorch's CPU int4 kernel like `quantization="int4"` with group size 32. The embedding, the LM
head and the norms stay as converted (SmolLM2's embedding is Q8_0 in its file: kept in fp32, as every
quantization here keeps it).

Reading the file needs the `gguf` package, imported here only (the GPU machine has none; GGUF models are a
CPU-side path). Layout details: llama.cpp's converter permutes q and k rows for its rotary layout, undone here
row by row as transformers undoes it for the dense weights, and kvserve's fused q/k/v and gate/up
projections are the files' separate tensors stacked by rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .gguf_blocks import BLOCK_BYTES, Q8_0, int4_from_q4_blocks, int8_from_q8_0_blocks

CONVERTED_MARKER = "kvserve-converted.json"  # engine.models.resolve writes it, naming the source file
# kvserve projection -> the GGUF tensors stacked (by rows) to form it
FUSED = {"qkv_proj": ("attn_q", "attn_k", "attn_v"), "o_proj": ("attn_output",),
         "gate_up_proj": ("ffn_gate", "ffn_up"), "down_proj": ("ffn_down",)}


def gguf_source(model_dir: str | Path | None) -> Path | None:
    """The GGUF file a converted model directory came from (None for any other directory)."""
    if model_dir is None:
        return None
    marker = Path(model_dir) / CONVERTED_MARKER
    if not marker.is_file():
        return None
    return Path(json.loads(marker.read_text())["source"])


def _unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's q/k permutation (transformers' reverse_permute_weights on indices)."""
    dim = n_rows // n_head // 2
    return torch.arange(n_rows).reshape(n_head, dim, 2).transpose(1, 2).reshape(n_rows)


class GGUFProjections:
    """The Q4 blocks of a GGUF file's decoder projections, as int4 (codes, scales, zeros) per kvserve layer."""

    method = "gguf"

    def __init__(self, path: Path):
        try:
            import gguf
        except ImportError as e:  # pragma: no cover - the dev environment has it
            raise ValueError("quantization: 'gguf' needs the gguf package (pip install gguf)") from e
        self.path = path
        self._tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}

    def kind(self, layer: int, name: str) -> str:
        """"int4" (every stacked tensor Q4_0 / Q4_1) or "int8" (every one Q8_0) for kvserve's `name` projection;
        ValueError naming quantization for anything else (K-quants, fp16, a mix)."""
        types = set()
        for part in FUSED[name]:
            t = self._tensors.get(f"blk.{layer}.{part}.weight")
            kind = "missing" if t is None else t.tensor_type.name
            if t is None or (int(t.tensor_type) not in BLOCK_BYTES and int(t.tensor_type) != Q8_0):
                raise ValueError(f"quantization: 'gguf' runs Q4_0/Q4_1/Q8_0 projections, but {self.path.name}'s "
                                 f"blk.{layer}.{part}.weight is {kind}; use quantization=None (fp32) or 'int4'")
            types.add("int8" if int(t.tensor_type) == Q8_0 else "int4")
        if len(types) > 1:
            raise ValueError(f"quantization: 'gguf' cannot fuse {self.path.name}'s {', '.join(FUSED[name])} of layer "
                             f"{layer}: some are Q8_0 and some Q4; use quantization=None (fp32)")
        return types.pop()

    def check(self, num_layers: int) -> None:
        """Every projection of every layer is runnable (`kind` raises otherwise)."""
        for i in range(num_layers):
            for name in FUSED:
                self.kind(i, name)

    def _rows(self, layer: int, part: str, heads: dict[str, int]) -> tuple[torch.Tensor, int]:
        t = self._tensors[f"blk.{layer}.{part}.weight"]
        raw = torch.from_numpy(t.data.copy()).reshape(int(t.shape[1]), -1)  # [N, K / 32 * block bytes]
        if part in heads:
            raw = raw[_unpermute_rows(raw.shape[0], heads[part])]
        return raw, int(t.tensor_type)

    def projection(self, layer: int, name: str, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, ...]:
        """kvserve's `name` projection of `layer`: int4 (codes [N, K], scales, zeros [N, K / 32]) from Q4
        blocks, or int8 (codes [N, K], scales [N, K / 32]) from Q8_0 blocks (see `kind`)."""
        heads = {"attn_q": num_heads, "attn_k": num_kv_heads}
        rows = [self._rows(layer, part, heads) for part in FUSED[name]]
        pieces = [int8_from_q8_0_blocks(raw) if qtype == Q8_0 else int4_from_q4_blocks(raw, qtype) for raw, qtype in rows]
        return tuple(torch.cat(p, dim=0) for p in zip(*pieces))


LAYER = re.compile(r"layers\.(\d+)\.")


def layer_index(module_name: str) -> int:
    return int(LAYER.search(module_name).group(1))


def gguf_int4_config(model, tensor_parallel_size: int):
    """The `WeightQuantConfig` for quantization='gguf' on `model` (an `engine.config.ModelConfig`), after
    checking that it came from a GGUF file whose every projection is Q4_0 / Q4_1."""
    from .config import WeightQuantConfig

    source = gguf_source(model.path)
    if source is None:
        raise ValueError("quantization: 'gguf' runs a GGUF file's own 4-bit blocks; this model is not a .gguf file "
                         "(give --model FILE.gguf, or leave --model unset for the default model)")
    if tensor_parallel_size != 1:
        raise ValueError("quantization: 'gguf' is not supported with tensor_parallel_size > 1 yet")
    if not source.is_file():
        raise ValueError(f"quantization: 'gguf' needs the source file {source}, which is gone")
    GGUFProjections(source).check(model.num_layers)
    return WeightQuantConfig("gguf", 32, source=str(source))
