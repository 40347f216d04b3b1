"""Backend selection: the torch backend (the reference everywhere), the cpu backend (the torch backend with
the C decode kernel of kernels.cpu) or the Triton kernels (CUDA)."""

from __future__ import annotations

import logging
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
    """The backend called `name`. "cpu" compiles its decode kernel on first use (about a second, cached);
    where that cannot be done (no C compiler) it says why in the log and runs as the torch backend."""
    if name in ("torch", "cpu"):
        from .torch_backend import TorchAttentionBackend

        return TorchAttentionBackend(_cpu_decode_kernel() if name == "cpu" else None)
    if name == "triton":
        from .triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention_backend: unknown backend {name!r}; use torch, cpu or triton")


def _cpu_decode_kernel():
    from kernels.cpu import CpuKernelUnavailable, load_paged_decode

    try:
        return load_paged_decode()
    except CpuKernelUnavailable as e:
        logging.getLogger(__name__).warning("attention_backend cpu: no decode kernel (%s); decoding with torch", e)
        return None
