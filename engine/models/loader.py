"""Build a model and fill its weights: from safetensors files, or random with real shapes ("dummy").

Checkpoint names are transformers' (`model.layers.0.self_attn.q_proj.weight`, ...). Our modules drop the
`model.` prefix and fuse q/k/v and gate/up, so a few checkpoint tensors land in a slice of one parameter
(`_STACKED`). Mixture-of-experts layers stack their experts: a per-expert checkpoint tensor
(`experts.3.w1` in Mixtral, `experts.3.gate_proj` in Qwen3-MoE / OLMoE) lands in expert 3's slice of
`experts.gate_up_proj` [E, 2I, H] or `experts.down_proj` [E, H, I]; checkpoints that are already stacked
(transformers 5's own layout) load as they are. Gemma 3's multimodal checkpoints hold the language model under
`language_model.`; the vision tower is skipped. Loading goes tensor by tensor, never holding a second copy.
A tensor-parallel rank (Llama family only, `engine.distributed.partition`) reads only its slice of each tensor
(`engine.models.parallel.shard_source`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable

import torch
import torch.nn as nn

from ..config import ModelConfig
from .arch import model_class
from .layers import RMSNorm, RotaryEmbedding
from .parallel import VOCAB_PARAMS, TPContext, read_shard, shard_source
from .variants import GemmaRMSNorm

logger = logging.getLogger(__name__)

# checkpoint sub-name -> (fused parameter sub-name, shard index)
_STACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}
# per-expert checkpoint name -> (stacked parameter, half of gate_up: 0 gate, 1 up, None = all of down)
_EXPERT = {"w1": ("gate_up_proj", 0), "gate_proj": ("gate_up_proj", 0), "w3": ("gate_up_proj", 1),
           "up_proj": ("gate_up_proj", 1), "w2": ("down_proj", None), "down_proj": ("down_proj", None)}
_EXPERT_RE = re.compile(r"^(.*)\.experts\.(\d+)\.(\w+)\.weight$")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.")

Dest = Callable[[torch.Tensor], torch.Tensor]  # the part of a parameter one checkpoint tensor fills


def build_model(cfg: ModelConfig, device: torch.device, seed: int = 0, tp: TPContext | None = None) -> nn.Module:
    """The model (with `tp`: this rank's shard of it), weights loaded. Dummy weights are drawn per rank
    (seed + rank), so a sharded dummy model is not the unsharded one split."""
    # Build on the meta device (no memory, no random init), then allocate uninitialised storage: every
    # parameter is written exactly once below, by the loader or the dummy initialiser.
    kwargs = {} if tp is None else {"tp": tp}  # only the Llama family shards (partition.plan_for_model)
    with torch.device("meta"):
        model = model_class(cfg.architecture)(cfg.hf_config, max_positions=cfg.max_model_len, **kwargs).to(cfg.dtype)
    model.to_empty(device=device)
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.build(device)  # RoPE tables stay fp32 whatever the model dtype
    if cfg.load_format == "dummy":
        init_dummy_weights(model, seed + (0 if tp is None else tp.shard.rank))
    else:
        load_safetensors(model, cfg.path, prepacked=cfg.quantization is not None and cfg.quantization.prepacked)
    model.eval()
    return model


def _shard_slice(model: nn.Module, param_name: str, fused: str, shard: int) -> tuple[int, int]:
    """Rows of checkpoint tensor `shard` inside fused parameter `param_name`, in this model's (rank's) sizes."""
    if fused == "qkv_proj":
        attn = model.get_submodule(param_name.rsplit(".", 2)[0])
        q, kv = attn.q_size, attn.kv_size
        return [(0, q), (q, q + kv), (q + kv, q + 2 * kv)][shard]
    inter = model.get_parameter(param_name).shape[0] // 2
    return [(0, inter), (inter, 2 * inter)][shard]


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _target(model: nn.Module, name: str) -> tuple[str, Dest | None, int | None] | None:
    """Map a checkpoint tensor name to (our parameter name, the part of it to fill or None for all of it,
    index inside a fused parameter or None); None = skip the tensor."""
    if name.endswith(_IGNORED_SUFFIXES) or name.startswith(_IGNORED_PREFIXES):
        return None
    name = _strip(name).replace(".block_sparse_moe.", ".mlp.")
    if name == "lm_head.weight" and model.tie_word_embeddings:
        return None
    if m := _EXPERT_RE.match(name):
        prefix, expert, kind = m.group(1), int(m.group(2)), m.group(3)
        if kind not in _EXPERT:
            raise ValueError(f"model: checkpoint tensor {name!r} is not an expert weight this model knows")
        stacked, half = _EXPERT[kind]
        if half is None:
            return f"{prefix}.experts.{stacked}", lambda p: p[expert], None
        return f"{prefix}.experts.{stacked}", lambda p: p[expert].chunk(2, dim=0)[half], None
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p in _STACKED:
            fused, shard = _STACKED[p]
            parts[i] = fused
            name = ".".join(parts)
            # evaluated once the name is known to be a parameter (an unknown name gets its clear error first)
            return name, lambda t: t[slice(*_shard_slice(model, name, fused, shard))], shard
    return name, None, None


# a pre-quantized projection's tensors: AWQ / GPTQ, compressed-tensors (engine.quantization.prepacked)
PACKED_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx", ".weight_packed", ".weight_scale", ".weight_shape",
                   ".weight_zero_point", ".weight_g_idx")
PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def load_safetensors(model: nn.Module, path, prepacked: bool = False) -> None:
    """Fill every parameter from the checkpoint. `prepacked`: its projections are stored quantized (AWQ, GPTQ,
    compressed-tensors); their tensors are left to `engine.quantization.apply`, which replaces those
    projections after loading."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(str(path), "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"model: no *.safetensors files in {path}")
    params = dict(model.named_parameters())
    filled: dict[str, int] = {n: 0 for n in params}
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                if prepacked and key.endswith(PACKED_SUFFIXES):
                    continue
                target = _target(model, key)
                if target is None:
                    continue
                name, part, fused_index = target
                if name not in params and _beyond_last_layer(model, name):
                    continue  # a truncated model (a speculative draft's first layers) skips the rest
                if name not in params:
                    raise ValueError(f"model: checkpoint tensor {key!r} has no place in the model")
                source = None if getattr(model, "tp", None) is None else shard_source(model.tp, name, fused_index)
                param, tensor = params[name], read_shard(f, key, source)
                dest = param.data if part is None else part(param.data)
                if source is not None and name.endswith(VOCAB_PARAMS):
                    # the last vocabulary chunk is padded: zero rows past the real vocabulary
                    dest[tensor.shape[0]:].zero_()
                    filled[name] += dest[tensor.shape[0]:].numel()
                    dest = dest[:tensor.shape[0]]
                if dest.shape != tensor.shape:
                    raise ValueError(f"model: {key} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
                dest.copy_(tensor)
                filled[name] += tensor.numel()
    missing = [n for n, count in filled.items() if count != params[n].numel()
               and not (prepacked and n.endswith(".weight") and n.rsplit(".", 2)[-2] in PROJECTIONS)]
    if missing:
        raise ValueError(f"model: checkpoint is missing weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


_LAYER_RE = re.compile(r"^layers\.(\d+)\.")


def _beyond_last_layer(model: nn.Module, name: str) -> bool:
    """Whether `name` belongs to a decoder layer past the model's last one (the model was built with fewer
    layers than its checkpoint holds)."""
    m = _LAYER_RE.match(name)
    layers = getattr(model, "layers", None)
    return m is not None and layers is not None and int(m.group(1)) >= len(layers)


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights with the real shapes: N(0, 0.02) matrices (experts and routers included), identity norms
    (ones, or zeros for Gemma's (1 + weight) form), zero biases. Good for speed measurements; the text they
    produce is noise."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    norms = {id(m.weight): 0.0 if isinstance(m, GemmaRMSNorm) else 1.0
             for m in model.modules() if isinstance(m, RMSNorm)}
    for name, p in model.named_parameters():
        if id(p) in norms:
            p.fill_(norms[id(p)])
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).to(p.dtype) * 0.02)
