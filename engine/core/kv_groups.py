"""KV-cache groups: which layers share a block table, and how much of the past each group keeps.

A model whose layers all attend to the whole past has one group and one block table per request. A model with
sliding-window layers (Mistral, Phi-3, Gemma 2/3) keeps, in a window layer, only the keys of the last `window`
positions: blocks before that are freed while the request runs. Hybrid models mix both kinds (Gemma 2 alternates
local and global layers; Gemma 3 has five local layers per global one), so they get one group per kind, each with
its own block table, and every group draws its blocks from the same pool.

For that to work a block must be the same size in every group. Following vLLM's hybrid allocator, the layers of
each kind are split into groups of equal size `group_size`, and the runner allocates `group_size` K/V tensors of
`num_blocks` blocks each: layer j of every group uses tensor j. A block id then names one block in each of those
tensors, owned by whichever group allocated it. The split (a vLLM heuristic) uses the smallest kind's layer count
as the group size, or the largest when the kinds are within 25% of each other; a kind whose count is not a multiple
gets a last, smaller group, whose missing layers leave those tensors' blocks unused (padding):

    Mistral 7B (32 window layers)           -> 1 group  of 32: window 4096
    Gemma 2 9B (21 window + 21 global)      -> 2 groups of 21: global | window 4096
    Gemma 3 4B (29 window + 5 global)       -> 7 groups of 5:  global | window x 6 (the last one has 4 layers)

On the wire, a request's block table interleaves its groups: logical block i of group g is entry i * G + g, so a
table still only grows at its end and the step protocol (`engine.step`) is the same for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

# How much bigger the largest kind may be than the smallest before groups are sized by the smallest.
_SAME_SIZE_SLACK = 1.25


@dataclass(frozen=True, slots=True)
class KVCacheGroup:
    window: int | None  # keys older than `position - window + 1` are never read; None = the whole past
    layers: tuple[int, ...]  # layer indices; the i-th uses the i-th K/V tensor


def normalize_windows(layer_windows: tuple[int | None, ...], max_model_len: int) -> tuple[int | None, ...]:
    """A window that covers the whole context window is no window at all."""
    return tuple(None if w is None or w >= max_model_len else int(w) for w in layer_windows)


def kv_cache_groups(layer_windows: tuple[int | None, ...]) -> tuple[KVCacheGroup, ...]:
    """Split the layers into equal-size groups of one window each; full-attention groups first."""
    if not layer_windows:
        raise ValueError("layer_windows: a model has at least one layer")
    by_window: dict[int | None, list[int]] = {}
    for layer, window in enumerate(layer_windows):
        if window is not None and window < 1:
            raise ValueError(f"sliding_window: must be >= 1, got {window} for layer {layer}")
        by_window.setdefault(window, []).append(layer)
    if len(by_window) == 1:
        ((window, layers),) = by_window.items()
        return (KVCacheGroup(window, tuple(layers)),)
    counts = [len(v) for v in by_window.values()]
    size = max(counts) if max(counts) < _SAME_SIZE_SLACK * min(counts) else min(counts)
    order = sorted(by_window, key=lambda w: (w is not None, w or 0))
    return tuple(KVCacheGroup(w, tuple(by_window[w][i:i + size]))
                 for w in order for i in range(0, len(by_window[w]), size))


def group_size(groups: tuple[KVCacheGroup, ...]) -> int:
    """K/V tensors the runner allocates: the largest group's layer count."""
    return max(len(g.layers) for g in groups)


def layer_slots(groups: tuple[KVCacheGroup, ...], num_layers: int) -> tuple[tuple[int, int], ...]:
    """(group index, tensor index) of each layer."""
    slots: dict[int, tuple[int, int]] = {}
    for g, group in enumerate(groups):
        for j, layer in enumerate(group.layers):
            slots[layer] = (g, j)
    if sorted(slots) != list(range(num_layers)):
        raise ValueError(f"layer_windows: groups cover layers {sorted(slots)}, expected 0..{num_layers - 1}")
    return tuple(slots[i] for i in range(num_layers))


def first_needed_block(position: int, window: int | None, block_size: int) -> int:
    """The first logical block a query at `position` (or any later one) reads: the block holding key
    `position - window + 1`, the oldest one a window of `window` keys (the query's own included) reaches."""
    if window is None:
        return 0
    return max(0, position - window + 1) // block_size
