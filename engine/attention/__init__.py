"""Attention over the paged KV cache: the metadata one step carries, and the backends that use it.

Interface (both backends implement it exactly, the Triton one on CUDA, the torch one everywhere):

- `store_kv(key[T,KVH,D], value, key_cache, value_cache, slot_mapping[T])`: write each token's K/V into
  its slot (`block_id * block_size + offset`); slot -1 is skipped.
- `paged_attention(query[T,H,D], key_cache, value_cache, block_tables[S,B] int32, cu_seqlens_q[S+1] int32,
  seq_lens[S] int32, scale) -> [T,H,D]`: query token i of sequence s sits at position
  `seq_lens[s] - q_len_s + i` and attends causally to every cached key up to that position (only the last
  `sliding_window` of them for a window group), optionally with soft-capped scores.

Caches are laid out `[num_blocks, block_size, num_kv_heads, head_dim]`, one K and one V tensor per layer.
"""

from __future__ import annotations

from .metadata import AttentionMetadata, build_attention_metadata
from .backend import AttentionBackend, get_attention_backend

__all__ = ["AttentionMetadata", "AttentionBackend", "build_attention_metadata", "get_attention_backend"]
