"""What every model class shares about the paged KV cache: which K/V tensors and which attention metadata
each layer uses when its layers form several KV-cache groups (`engine.core.kv_groups`).

The runner allocates `ModelConfig.num_kv_tensors` K/V pairs and, for a model with several groups, hands the
forward pass one `AttentionMetadata` per group (a tuple; a single object for one group). Layer i reads the
pair and the metadata its `(group, tensor)` slot names.
"""

from __future__ import annotations

import torch

from ..attention import AttentionMetadata
from ..core.kv_groups import kv_cache_groups, layer_slots, normalize_windows
from .arch import layer_windows


def kv_slots(cfg, max_positions: int) -> tuple[tuple[int, int], ...]:
    """(group, tensor) of each layer, for a model serving contexts of up to `max_positions` tokens."""
    windows = normalize_windows(layer_windows(cfg), max_positions)
    return layer_slots(kv_cache_groups(windows), cfg.num_hidden_layers)


def bind_kv_cache(attentions, caches: list[tuple[torch.Tensor, torch.Tensor]],
                  slots: tuple[tuple[int, int], ...]) -> None:
    """Give each attention module (in layer order) the K/V pair of its slot."""
    for attn, (_, tensor) in zip(attentions, slots, strict=True):
        attn.key_cache, attn.value_cache = caches[tensor]


def group_meta(meta: AttentionMetadata | tuple[AttentionMetadata, ...], group: int) -> AttentionMetadata:
    return meta[group] if isinstance(meta, tuple) else meta
