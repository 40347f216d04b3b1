"""Architecture facts read from a transformers config: which families are supported, the text part of a
multimodal config, and each layer's sliding window.

Sliding windows follow transformers' masks exactly: a layer with window W lets the query at position p see keys
p - W + 1 .. p (W keys, its own included: `kv_idx > q_idx - sliding_window`). Which layers slide:

    mistral, mixtral, phi3, qwen3_moe   every layer, when `sliding_window` is set
    qwen2, qwen3, gemma2, gemma3_text   the layers whose `layer_types` entry is "sliding_attention"
    llama, olmoe                        none (OLMoE's modeling ignores the field)
"""

from __future__ import annotations

# model_type -> (family module engine.models.<module>, its model class)
_LLAMA, _MOE = ("llama", "LlamaForCausalLM"), ("mixtral", "MoEForCausalLM")
_GEMMA, _PHI3 = ("gemma", "GemmaForCausalLM"), ("phi3", "Phi3ForCausalLM")
FAMILIES = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "mixtral": _MOE, "qwen3_moe": _MOE, "olmoe": _MOE,
    "gemma2": _GEMMA, "gemma3_text": _GEMMA,
    "phi3": _PHI3,
}
_NO_SLIDING = ("llama", "olmoe")
_MOE_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts")


def text_config(hf):
    """The language model's config: Gemma 3's multimodal checkpoints (model_type "gemma3") wrap it in
    `text_config`; everything else is already one."""
    if getattr(hf, "model_type", "") == "gemma3" and getattr(hf, "text_config", None) is not None:
        return hf.text_config
    return hf


def check_supported(hf) -> str:
    """The config's model_type, or ValueError naming the supported ones."""
    model_type = getattr(hf, "model_type", "")
    if model_type not in FAMILIES:
        raise ValueError(f"model: architecture {model_type!r} is not supported ({', '.join(sorted(FAMILIES))})")
    return model_type


def layer_windows(hf) -> tuple[int | None, ...]:
    """Each layer's sliding window (None = attends to the whole past), as transformers' modeling uses it."""
    n = hf.num_hidden_layers
    window = getattr(hf, "sliding_window", None)
    if not window or hf.model_type in _NO_SLIDING:
        return (None,) * n
    types = getattr(hf, "layer_types", None)
    if types is not None and hf.model_type not in ("mistral", "mixtral", "phi3", "qwen3_moe"):
        if len(types) != n:
            raise ValueError(f"model: layer_types has {len(types)} entries for {n} layers")
        return tuple(int(window) if t == "sliding_attention" else None for t in types)
    return (int(window),) * n


def model_class(model_type: str):
    """The model class of a supported model_type (its family module is imported on first use)."""
    import importlib

    module, name = FAMILIES[model_type]
    return getattr(importlib.import_module(f"engine.models.{module}"), name)


def num_experts(hf) -> int:
    """Routed experts per MoE layer (0 for a dense model)."""
    return next((int(getattr(hf, k)) for k in _MOE_EXPERTS if getattr(hf, k, None)), 0)
