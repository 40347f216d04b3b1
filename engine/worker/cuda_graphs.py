"""Decode steps replayed from CUDA graphs.

A decode step launches a few hundred small kernels whose launch overhead would dominate at small batch sizes.
The runner captures the model's forward once per padded batch size (1, 2, 4, 8, then multiples of 16 up to
`max_num_seqs`, at most 256) and split-KV count tier (below), over static input buffers, and replays the
smallest graph that fits. Padding rows have context length 0 and slot -1: the KV-store kernel skips them and
attention writes zeros for them. The static buffers are filled from the step's uploaded arrays with
device-to-device copies (the step's one host-to-device copy has already happened).

Split-KV counts. The attention kernels see only host-side constants during capture (max_query_len 1, a
fixed `num_splits`), so a graph's grid does not depend on the batch's real context lengths; each split of
the split-KV kernel computes its own key range from `seq_lens` on the device, so any split count is correct
for any context. The count that is *fast* depends on the context: the kernel planner splits long contexts
of small batches many ways and short ones not at all. One graph per batch size, captured for the longest
context (max_model_len), would make a 768-token decode at batch 1 launch dozens of nearly empty splits and
reduce them. So each batch size gets a few tiers: the powers of two up to the count chosen at
max_model_len, plus that count; a replay uses the largest tier not above the count the planner chooses for
the batch's actual longest context (`pick_tier`). Batch sizes large enough to fill the GPU without splitting
have the single tier 1.
"""

from __future__ import annotations

from collections import Counter

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


def split_tiers(most: int) -> list[int]:
    """Split counts captured for a batch size whose planner count at max_model_len is `most`."""
    return sorted({1 << i for i in range(most.bit_length()) if 1 << i <= most} | {most})


def pick_tier(tiers: list[int], wanted: int) -> int:
    """The largest captured count not above what the planner wants (never more splits than are worth it)."""
    return max(t for t in tiers if t <= max(wanted, 1))


class DecodeGraphs:
    def __init__(self, model, backend, config: EngineConfig):
        self.model, self.backend = model, backend
        self.model_config = config.model
        self.device = config.device
        self.block_size = config.cache.block_size
        self.max_model_len = config.model.max_model_len
        self.sizes = capture_sizes(config.scheduler.max_num_seqs)
        self.tiers = {b: split_tiers(self.num_splits(b, self.max_model_len)) for b in self.sizes}
        n, dev = self.sizes[-1], self.device
        self.max_blocks = -(-self.max_model_len // self.block_size)
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.block_tables = torch.zeros((n, self.max_blocks), dtype=torch.int32, device=dev)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.replays: Counter[tuple[int, int]] = Counter()  # (batch size, splits) -> replays: what tests read
        self._capture()

    def num_splits(self, batch_size: int, max_seq_len: int) -> int:
        """The split count the kernel planner chooses for this decode batch size and longest context."""
        import kernels

        mc = self.model_config
        return kernels.decode_num_splits(batch_size, mc.num_heads, mc.num_kv_heads, mc.head_dim, max_seq_len,
                                         mc.dtype, self.device)

    def _meta(self, b: int, splits: int) -> AttentionMetadata:
        """Metadata over the static buffers, with a fixed split-KV count for the triton backend."""
        return AttentionMetadata(slot_mapping=self.slot_mapping[:b], block_tables=self.block_tables[:b],
                                 cu_seqlens_q=self.cu_seqlens_q[:b + 1], seq_lens=self.seq_lens[:b],
                                 max_query_len=1, max_seq_len=self.max_model_len, num_decode_only=True,
                                 plan=TritonPlan(splits), sliding_window=self.model_config.group_windows[0])

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory
            for splits in reversed(self.tiers[b]):
                meta = self._meta(b, splits)
                for _ in range(2):  # warm-up: compiles kernels, settles allocator state
                    self.model(self.input_ids[:b], self.positions[:b], meta, self.backend)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.outputs[(b, splits)] = self.model(self.input_ids[:b], self.positions[:b], meta, self.backend)
                self.graphs[(b, splits)] = graph
        torch.cuda.synchronize(self.device)

    def size_for(self, hb) -> int | None:
        """The graph batch size that replays this host batch, or None when it must run eagerly."""
        b = len(hb.query_lens)
        if not hb.decode_only or b > self.sizes[-1] or hb.block_tables.shape[1] > self.max_blocks:
            return None
        return next(s for s in self.sizes if s >= b)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            seq_lens: torch.Tensor, block_tables: torch.Tensor, b: int, max_seq_len: int) -> torch.Tensor:
        """Hidden states [b, hidden] of a decode step whose device arrays are padded to a graph size."""
        size = input_ids.shape[0]
        key = (size, pick_tier(self.tiers[size], self.num_splits(size, max_seq_len)))
        self.input_ids[:size].copy_(input_ids)
        self.positions[:size].copy_(positions)
        self.slot_mapping[:size].copy_(slot_mapping)
        self.seq_lens[:size].copy_(seq_lens)
        # columns past this step's width keep stale ids: never read, a key past seq_len has no column read
        self.block_tables[:size, :block_tables.shape[1]].copy_(block_tables)
        self.graphs[key].replay()
        self.replays[key] += 1
        return self.outputs[key][:b]
