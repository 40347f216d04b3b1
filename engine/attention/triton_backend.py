"""The Triton kernels of `kernels/` behind the engine's attention interface (CUDA, or the interpreter on CPU).

An 8-bit KV cache (`kv_scales` = the layer's K and V scale tensors) is quantized by the store kernel and
dequantized inside the attention kernels; the codes are the torch backend's, bit for bit.
"""

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

    def store_kv(self, key, value, key_cache, value_cache, meta: AttentionMetadata, kv_scales=None) -> None:
        k_scales, v_scales = kv_scales if kv_scales is not None else (None, None)
        self._kernels.store_kv(key, value, key_cache, value_cache, meta.slot_mapping, k_scales, v_scales)

    def attention(self, query, key, value, key_cache, value_cache, meta: AttentionMetadata, scale: float, *,
                  logit_softcap: float | None = None, kv_scales=None) -> torch.Tensor:
        # `plan` may carry a fixed split count chosen by a CUDA-graph runner; otherwise the kernel chooses.
        num_splits = meta.plan.num_splits if isinstance(meta.plan, TritonPlan) else None
        return self._kernels.paged_attention(
            query, key_cache, value_cache, meta.block_tables, meta.cu_seqlens_q, meta.seq_lens, scale,
            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len, num_splits=num_splits,
            sliding_window=meta.sliding_window, softcap=logit_softcap,
            k_scales=None if kv_scales is None else kv_scales[0], v_scales=None if kv_scales is None else kv_scales[1],
        )
