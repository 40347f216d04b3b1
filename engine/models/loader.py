"""Build a model and fill its weights: from safetensors files, or random with real shapes ("dummy").

Checkpoint names are transformers' (`model.layers.0.self_attn.q_proj.weight`, ...). Our modules drop the
`model.` prefix and fuse q/k/v and gate/up, so a few checkpoint tensors land in a slice of one parameter;
`_STACKED` lists those. Loading goes tensor by tensor, never holding a second copy of the model. A
tensor-parallel rank reads only its slice of each tensor (`engine.models.parallel.shard_source`).
"""

from __future__ import annotations

import glob
import logging
import os

import torch

from ..config import ModelConfig
from .llama import LlamaForCausalLM
from .parallel import VOCAB_PARAMS, TPContext, read_shard, shard_source

logger = logging.getLogger(__name__)

# checkpoint sub-name -> (fused parameter sub-name, shard index)
_STACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_model(cfg: ModelConfig, device: torch.device, seed: int = 0, tp: TPContext | None = None) -> LlamaForCausalLM:
    """The model (with `tp`: this rank's shard of it), weights loaded. Dummy weights are drawn per rank
    (seed + rank), so a sharded dummy model is not the unsharded one split."""
    # Build on the meta device (no memory, no random init), then allocate uninitialised storage: every
    # parameter is written exactly once below, by the loader or the dummy initialiser.
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg.hf_config, max_positions=cfg.max_model_len, tp=tp).to(cfg.dtype)
    model.to_empty(device=device)
    model.rotary.build(device)  # RoPE tables stay fp32 whatever the model dtype
    if cfg.load_format == "dummy":
        init_dummy_weights(model, seed + (0 if tp is None else tp.shard.rank))
    else:
        load_safetensors(model, cfg.path)
    model.eval()
    return model


def _shard_slice(model: LlamaForCausalLM, fused: str, shard: int) -> tuple[int, int]:
    """Rows of checkpoint tensor `shard` inside fused parameter `fused`, in this model's (rank's) sizes."""
    if fused == "qkv_proj":
        attn = model.layers[0].self_attn
        q, kv = attn.q_size, attn.kv_size
        return [(0, q), (q, q + kv), (q + kv, q + 2 * kv)][shard]
    inter = model.layers[0].mlp.intermediate_size
    return [(0, inter), (inter, 2 * inter)][shard]


def _target(model: LlamaForCausalLM, name: str) -> tuple[str, tuple[int, int] | None, int | None] | None:
    """Map a checkpoint tensor name to (our parameter name, row slice or None, index inside a fused
    parameter or None); None = skip the tensor."""
    if name.endswith(_IGNORED_SUFFIXES):
        return None
    if name.startswith("model."):
        name = name[len("model."):]
    if name == "lm_head.weight" and model.tie_word_embeddings:
        return None
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p in _STACKED:
            fused, shard = _STACKED[p]
            parts[i] = fused
            return ".".join(parts), _shard_slice(model, fused, shard), shard
    return name, None, None


def load_safetensors(model: LlamaForCausalLM, path) -> None:
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(str(path), "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"model: no *.safetensors files in {path}")
    params = dict(model.named_parameters())
    filled: dict[str, int] = {n: 0 for n in params}
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                target = _target(model, key)
                if target is None:
                    continue
                name, rows, fused_index = target
                if name not in params:
                    raise ValueError(f"model: checkpoint tensor {key!r} has no place in the model")
                source = None if model.tp is None else shard_source(model.tp, name, fused_index)
                param, tensor = params[name], read_shard(f, key, source)
                dest = param.data if rows is None else param.data[rows[0]:rows[1]]
                if model.tp is not None and name.endswith(VOCAB_PARAMS):
                    # the last vocabulary chunk is padded: zero rows past the real vocabulary
                    dest[tensor.shape[0]:].zero_()
                    filled[name] += dest[tensor.shape[0]:].numel()
                    dest = dest[:tensor.shape[0]]
                if dest.shape != tensor.shape:
                    raise ValueError(f"model: {key} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
                dest.copy_(tensor)
                filled[name] += tensor.numel()
    missing = [n for n, count in filled.items() if count != params[n].numel()]
    if missing:
        raise ValueError(f"model: checkpoint is missing weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


@torch.no_grad()
def init_dummy_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Random weights with the real shapes: N(0, 0.02) matrices, unit norms, zero biases. Good for speed
    measurements; the text they produce is noise."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype) * 0.02)
