"""Backend selection: the torch backend (CPU, and the reference everywhere) or the Triton kernels (CUDA)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from .metadata import AttentionMetadata
from .plans import AttentionPlan


class AttentionBackend(Protocol):
    name: str

    def plan(self, query_lens: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray, block_size: int,
             device: torch.device, dtype: torch.dtype, sliding_window: int | None = None) -> AttentionPlan | None:
        """Backend-private precomputation for one step of one KV-cache group (None if the backend needs none)."""

    def store_kv(self, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                 value_cache: torch.Tensor, meta: AttentionMetadata) -> None: ...

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                  value_cache: torch.Tensor, meta: AttentionMetadata, scale: float, *,
                  logit_softcap: float | None = None) -> torch.Tensor:
        """Attention of `query` over the cache. `key`/`value` are this step's new K/V (already stored);
        a backend may use them directly for sequences with no earlier context. The window is the metadata's;
        `logit_softcap` (Gemma 2) caps scores as cap * tanh(score / cap) before masking and softmax."""


def get_attention_backend(name: str) -> AttentionBackend:
    if name == "torch":
        from .torch_backend import TorchAttentionBackend

        return TorchAttentionBackend()
    if name == "triton":
        from .triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention_backend: unknown backend {name!r}; use torch or triton")
