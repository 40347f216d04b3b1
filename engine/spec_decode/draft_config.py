"""The draft method's model, resolved and checked against the target before anything loads.

A draft model must speak the target's vocabulary: its token ids are proposed to the target as they are. The
check is the vocabulary size and, when both models ship a tokenizer, the token -> id maps themselves. With
`draft_layers` N the draft is its model's first N layers plus that model's own final norm and head
(self-speculation by early exit, as LayerSkip does; no training here, so acceptance is what the untrained
early exit gives). The draft runs on the host-driven path of `DraftProposer`, one KV-cache group of full
attention: sliding-window and MoE drafts are refused.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..config import ModelConfig


def resolve_draft_model(spec, target_arg: str | None, target: ModelConfig, device: torch.device) -> ModelConfig:
    """The draft's `ModelConfig` (same dtype and context window as the target). Raises ValueError naming
    `speculative_model` (or `speculative_config.draft_layers`) when the draft cannot serve this target."""
    from transformers import AutoConfig

    from ..models.arch import text_config
    from ..models.resolve import resolve_model

    source = spec.model if spec.model is not None else target_arg
    if source is None and target.path is None:  # a named shape with dummy weights: the draft is its truncation
        hf, path, tok, load_format, name = copy.deepcopy(target.hf_config), None, target.tokenizer, "dummy", target.name
    else:
        try:
            src = resolve_model(source)
        except (OSError, ValueError) as e:
            raise ValueError(f"speculative_model: cannot load {source!r}: {e}") from e
        hf = copy.deepcopy(text_config(AutoConfig.from_pretrained(src.path)))
        path, name, load_format = src.path, src.name, "safetensors"
        tok = str(src.path) if src.has_tokenizer else None
    layers = hf.num_hidden_layers
    if spec.draft_layers is not None:
        if spec.draft_layers >= layers:
            raise ValueError(f"speculative_config.draft_layers: must be below the draft model's {layers} layers "
                             f"(the whole model would be the draft), got {spec.draft_layers}")
        hf.num_hidden_layers = spec.draft_layers
        for key in ("layer_types", "mlp_only_layers"):  # per-layer lists follow the truncation
            if isinstance(getattr(hf, key, None), list):
                setattr(hf, key, getattr(hf, key)[:spec.draft_layers])
        name = f"{name}[:{spec.draft_layers} layers]"
    try:
        draft = ModelConfig.from_hf(hf, name=name, path=path, tokenizer=tok, load_format=load_format,
                                    dtype=target.dtype, max_model_len=target.max_model_len)
    except ValueError as e:
        raise ValueError(f"speculative_model: {e}") from e
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"speculative_model: the draft's vocabulary has {draft.vocab_size} tokens, the target's "
                         f"{target.vocab_size}; a draft must share the target's tokenizer")
    if draft.tokenizer and target.tokenizer and draft.tokenizer != target.tokenizer and \
            not _same_vocab(draft.tokenizer, target.tokenizer):
        raise ValueError(f"speculative_model: the draft's tokenizer ({draft.tokenizer}) maps tokens to ids "
                         f"differently from the target's ({target.tokenizer})")
    if draft.group_windows != (None,) or draft.architecture in ("mixtral", "qwen3_moe", "olmoe"):
        raise ValueError(f"speculative_model: a draft must be a dense model with full attention in every layer "
                         f"(Llama, Qwen2/3), not this {draft.architecture} model")
    return dataclasses.replace(draft, eos_token_ids=target.eos_token_ids)


def _same_vocab(a: str, b: str) -> bool:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(a).get_vocab() == AutoTokenizer.from_pretrained(b).get_vocab()
