"""Decode steps replayed from CUDA graphs.

A decode step launches a few hundred small kernels whose launch overhead would dominate at small batch sizes.
The runner captures the model's forward once per padded batch size (1, 2, 4, 8, then multiples of 16 up to
`max_num_seqs`, at most 256) over static input buffers, and replays the smallest graph that fits. Padding rows
have context length 0 and slot -1: the KV-store kernel skips them and attention writes zeros for them.

The attention kernels see only host-side constants during capture (max_query_len 1, max_seq_len =
max_model_len), so their grids do not depend on the batch's real context lengths; each split of the split-KV
kernel computes its own key range from `seq_lens` on the device.
"""

from __future__ import annotations

import numpy as np
import torch

from ..attention import AttentionMetadata
from ..attention.plans import TritonPlan
from ..config import EngineConfig


def capture_sizes(max_num_seqs: int, limit: int = 256) -> list[int]:
    top = min(max_num_seqs, limit)
    sizes = [s for s in (1, 2, 4, 8) if s <= top] + list(range(16, top + 1, 16))
    if sizes[-1] < top:
        sizes.append(top)
    return sizes


class DecodeGraphs:
    def __init__(self, model, backend, config: EngineConfig):
        self.model, self.backend = model, backend
        self.model_config = config.model
        self.device = config.device
        self.block_size = config.cache.block_size
        self.max_model_len = config.model.max_model_len
        self.sizes = capture_sizes(config.scheduler.max_num_seqs)
        n, dev = self.sizes[-1], self.device
        self.max_blocks = -(-self.max_model_len // self.block_size)
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._capture()

    def _meta(self, b: int) -> AttentionMetadata:
        """Metadata over the static buffers; `plan` is the fixed split-KV count the triton backend passes on,
        chosen for this batch size and the longest context a replay can have."""
        import kernels

        mc = self.model_config
        splits = kernels.decode_num_splits(b, mc.num_heads, mc.num_kv_heads, mc.head_dim, self.max_model_len,
                                           mc.dtype, self.device)
        return AttentionMetadata(slot_mapping=self.slot_mapping[:b], block_tables=self.block_tables[:b],
                                 cu_seqlens_q=self.cu_seqlens_q[:b + 1], seq_lens=self.seq_lens[:b],
                                 max_query_len=1, max_seq_len=self.max_model_len, num_decode_only=True,
                                 plan=TritonPlan(splits), sliding_window=mc.group_windows[0])

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory
            meta = self._meta(b)
            for _ in range(2):  # warm-up: compiles kernels, settles allocator state
                self.model(self.input_ids[:b], self.positions[:b], meta, self.backend)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[b] = self.model(self.input_ids[:b], self.positions[:b], meta, self.backend)
            self.graphs[b] = graph
        torch.cuda.synchronize(self.device)

    def can_run(self, hb) -> bool:
        return hb.decode_only and len(hb.query_lens) <= self.sizes[-1] and hb.block_tables.shape[1] <= self.max_blocks

    def run(self, hb) -> torch.Tensor:
        """Hidden states [b, hidden] for a decode-only host batch of b sequences."""
        b = len(hb.query_lens)
        size = next(s for s in self.sizes if s >= b)
        width = hb.block_tables.shape[1]

        def put(dst: torch.Tensor, src: np.ndarray) -> None:
            dst.copy_(torch.from_numpy(np.ascontiguousarray(src)), non_blocking=True)

        put(self.input_ids[:b], hb.input_ids)
        put(self.positions[:b], hb.positions)
        put(self.slot_mapping[:b], hb.slot_mapping)
        put(self.seq_lens[:b], hb.seq_lens.astype(np.int32))
        put(self.block_tables[:b, :width], hb.block_tables)
        if size > b:  # padding rows: empty context, writes skipped
            self.seq_lens[b:size].zero_()
            self.slot_mapping[b:size].fill_(-1)
            self.input_ids[b:size].zero_()
            self.positions[b:size].zero_()
        self.graphs[size].replay()
        return self.outputs[size][:b]
