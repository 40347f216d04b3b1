"""The model runner: a worker that owns the model weights and the KV-cache tensors and runs one step.

Given a `SchedulerOutput` it flattens the scheduled sequences into varlen tensors (token ids, positions,
`cu_seqlens_q`, `seq_lens`, block tables, slot mapping), runs the model, computes logits only for the rows
that sample, and samples. It keeps no scheduling state, only per-request sampler generators, so the same
class can later run as N tensor-parallel ranks that each receive the same `SchedulerOutput`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import cpu_allocator
from .attention import build_attention_metadata, get_attention_backend
from .config import EngineConfig
from .models.loader import build_model
from .outputs import TokenLogprob
from .sampler import Sampler, SamplingRow
from .scheduler import SchedulerOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunnerOutput:
    sampled: dict[str, int]
    logprobs: dict[str, TokenLogprob]


@dataclass(frozen=True, slots=True)
class HostBatch:
    """One step flattened on the host: T new tokens of S sequences."""

    input_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    query_lens: np.ndarray  # [S]
    seq_lens: np.ndarray  # [S] context length including the new tokens
    block_tables: np.ndarray  # [S, max_blocks] int32, 0-padded
    slot_mapping: np.ndarray  # [T]
    logits_indices: np.ndarray  # rows of the tokens whose logits are sampled
    sample_idx: list[int]  # which sequences sample

    @property
    def decode_only(self) -> bool:
        return bool(len(self.query_lens)) and bool((self.query_lens == 1).all())


class ModelRunner:
    def __init__(self, config: EngineConfig, forbidden_ids_fn=None):
        self.config = config
        self.device = config.device
        self.block_size = config.cache.block_size
        mc = config.model
        if self.device.type == "cpu":
            if config.cpu_threads is not None:
                torch.set_num_threads(config.cpu_threads)  # process-wide: this process is the worker
            cpu_allocator.keep_freed_memory()  # process-wide too: reuse activation pages across steps
        t0 = time.perf_counter()
        torch.manual_seed(config.seed)
        self.model = build_model(mc, self.device, seed=config.seed)
        self.load_time_s = time.perf_counter() - t0
        self.backend = get_attention_backend(config.attention_backend)
        self.sampler = Sampler(self.device, config.seed)
        self.graphs = None
        self.num_kv_blocks = self._decide_num_blocks()
        shape = (self.num_kv_blocks, self.block_size, mc.num_kv_heads, mc.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=mc.dtype, device=self.device),
                           torch.zeros(shape, dtype=mc.dtype, device=self.device)) for _ in range(mc.num_layers)]
        self.model.bind_kv_cache(self.kv_caches)
        if not config.enforce_eager and self.device.type == "cuda" and self.backend.name == "triton":
            from .cuda_graphs import DecodeGraphs

            t0 = time.perf_counter()
            self.graphs = DecodeGraphs(self.model, self.backend, config)
            logger.info("Captured %d decode CUDA graphs in %.1f s", len(self.graphs.sizes), time.perf_counter() - t0)
        tokens = self.num_kv_blocks * self.block_size
        logger.info("KV cache: %d blocks = %d tokens; max concurrency at max_model_len: %.2f (%.1f MiB, %d B/token)",
                    self.num_kv_blocks, tokens, tokens / mc.max_model_len,
                    self.num_kv_blocks * self.block_bytes / 2**20, mc.kv_bytes_per_token)

    # ---- KV-cache sizing -------------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        return self.block_size * self.config.model.kv_bytes_per_token

    def _decide_num_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_kv_blocks is not None:
            return cache.num_kv_blocks
        if self.device.type == "cuda":
            return self._profile_gpu_blocks()
        # CPU: a fixed budget, but never more than every sequence at full length could use.
        most = self.config.scheduler.max_num_seqs * -(-self.config.model.max_model_len // self.block_size)
        return max(1, min(cache.cpu_kv_cache_bytes // self.block_bytes, most))

    @torch.no_grad()
    def _profile_gpu_blocks(self) -> int:
        """Run the largest step the scheduler can produce, measure peak memory, and give what is left of
        `gpu_memory_utilization` x total memory to the KV cache."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        n = min(self.config.scheduler.max_num_batched_tokens, self.config.model.max_model_len)
        mc = self.config.model
        tiny = (1, self.block_size, mc.num_kv_heads, mc.head_dim)
        self.model.bind_kv_cache([(torch.zeros(tiny, dtype=mc.dtype, device=self.device),) * 2 for _ in range(mc.num_layers)])
        q = np.array([n], dtype=np.int64)
        hb = HostBatch(np.zeros(n, dtype=np.int64), np.arange(n), q, q, np.zeros((1, 1), dtype=np.int32),
                       np.arange(n) % self.block_size,  # a throwaway 1-block cache absorbs the writes
                       np.arange(n - min(n, self.config.scheduler.max_num_seqs), n), [])
        self.model.compute_logits(self.forward(hb))  # called before any graph exists: runs eagerly
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        budget = total * self.config.cache.gpu_memory_utilization - peak - (total - free - torch.cuda.memory_reserved(self.device))
        blocks = int(budget // self.block_bytes)
        if blocks < 1:
            raise RuntimeError(f"gpu_memory_utilization: no memory left for the KV cache (peak {peak / 2**30:.1f} GiB)")
        return blocks

    # ---- one step --------------------------------------------------------------------------------------------
    def prepare_host(self, out: SchedulerOutput) -> HostBatch:
        """Flatten the scheduled sequences into numpy arrays (no device work)."""
        seqs = out.seqs
        bs = self.block_size
        query_lens = np.fromiter((s.num_new for s in seqs), dtype=np.int64, count=len(seqs))
        starts = np.fromiter((s.start for s in seqs), dtype=np.int64, count=len(seqs))
        seq_lens = starts + query_lens
        cu = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(query_lens, out=cu[1:])
        total = int(cu[-1])
        ids: list[int] = []
        for s in seqs:
            ids.extend(s.token_ids[s.start:s.start + s.num_new])
        seq_of_token = np.repeat(np.arange(len(seqs)), query_lens)
        positions = np.arange(total, dtype=np.int64) - cu[:-1][seq_of_token] + starts[seq_of_token]
        max_blocks = max(len(s.block_ids) for s in seqs)
        block_tables = np.zeros((len(seqs), max_blocks), dtype=np.int32)
        for i, s in enumerate(seqs):
            block_tables[i, :len(s.block_ids)] = s.block_ids
        slot_mapping = block_tables[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs
        sample_idx = [i for i, s in enumerate(seqs) if s.sample]
        return HostBatch(np.asarray(ids, dtype=np.int64), positions, query_lens, seq_lens, block_tables,
                         slot_mapping, cu[1:][sample_idx] - 1, sample_idx)

    def _device(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

    def forward(self, hb: HostBatch) -> torch.Tensor:
        """Hidden states of the sampling rows, from a CUDA graph when one fits, else eagerly."""
        if self.graphs is not None and self.graphs.can_run(hb):
            return self.graphs.run(hb).index_select(0, self._device(hb.logits_indices))
        plan = self.backend.plan(hb.query_lens, hb.seq_lens, hb.block_tables, self.block_size, self.device,
                                 self.config.model.dtype)
        meta = build_attention_metadata(hb.query_lens, hb.seq_lens, hb.block_tables, hb.slot_mapping, self.device, plan)
        hidden = self.model(self._device(hb.input_ids), self._device(hb.positions), meta, self.backend)
        return hidden.index_select(0, self._device(hb.logits_indices))

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, forbidden) -> RunnerOutput:
        """Run one step. `forbidden(seq) -> tuple[int, ...]` names tokens a sequence may not sample yet."""
        self.sampler.forget(out.finished_ids)
        if not out.seqs:
            return RunnerOutput({}, {})
        hb = self.prepare_host(out)
        hidden = self.forward(hb)
        if not hb.sample_idx:
            return RunnerOutput({}, {})
        seqs = out.seqs
        rows = [SamplingRow(seqs[i].request_id, seqs[i].params, seqs[i].seed, seqs[i].token_ids,
                            seqs[i].num_prompt_tokens, forbidden(seqs[i])) for i in hb.sample_idx]
        result = self.sampler(self.model.compute_logits(hidden), rows)
        sampled = {r.request_id: t for r, t in zip(rows, result.token_ids)}
        logprobs = {r.request_id: lp for r, lp in zip(rows, result.logprobs) if lp is not None}
        return RunnerOutput(sampled, logprobs)
