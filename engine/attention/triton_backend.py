"""The Triton kernels of `kernels/` behind the engine's attention interface (CUDA only)."""

from __future__ import annotations

import torch

from .metadata import AttentionMetadata
from .plans import TritonPlan


class TritonAttentionBackend:
    name = "triton"

    def __init__(self) -> None:
        import kernels  # noqa: F401  (fails early and clearly when triton is missing)

        self._kernels = kernels

    def plan(self, query_lens, seq_lens, block_tables, block_size, device, dtype, sliding_window=None):
        return None

    def store_kv(self, key, value, key_cache, value_cache, meta: AttentionMetadata) -> None:
        self._kernels.store_kv(key, value, key_cache, value_cache, meta.slot_mapping)

    def attention(self, query, key, value, key_cache, value_cache, meta: AttentionMetadata, scale: float, *,
                  logit_softcap: float | None = None) -> torch.Tensor:
        # `plan` may carry a fixed split count chosen by a CUDA-graph runner; otherwise the kernel chooses.
        num_splits = meta.plan.num_splits if isinstance(meta.plan, TritonPlan) else None
        return self._kernels.paged_attention(
            query, key_cache, value_cache, meta.block_tables, meta.cu_seqlens_q, meta.seq_lens, scale,
            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len, num_splits=num_splits,
            sliding_window=meta.sliding_window, softcap=logit_softcap,
        )
