"""How many KV blocks the cache gets.

The user's `num_kv_blocks` wins. Otherwise the CPU gets a fixed byte budget and a GPU what is left of its
memory after a profiling run; both are capped at what the scheduler could ever fill: every one of
`max_num_seqs` sequences at `max_model_len` tokens. Without that cap a tiny model on a 139 GiB GPU would get
tens of millions of blocks that no step can use.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import EngineConfig


def max_useful_blocks(max_num_seqs: int, max_model_len: int, block_size: int, num_kv_groups: int = 1) -> int:
    """Every sequence at max_model_len, in every KV-cache group (a window group holds fewer: an upper bound)."""
    return max_num_seqs * -(-max_model_len // block_size) * num_kv_groups


def decide_num_blocks(config: EngineConfig, block_bytes: int, profile: Callable[[], int] | None) -> int:
    """`profile()` returns how many blocks fit in device memory (None on the CPU: a fixed byte budget)."""
    cache = config.cache
    if cache.num_kv_blocks is not None:
        return cache.num_kv_blocks
    fits = profile() if profile is not None else cache.cpu_kv_cache_bytes // block_bytes
    most = max_useful_blocks(config.scheduler.max_num_seqs, config.model.max_model_len, cache.block_size,
                             len(config.model.kv_groups))
    return max(1, min(fits, most))
