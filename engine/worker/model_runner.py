"""The model runner: a worker that owns the model weights and the KV-cache tensors and runs one step.

Given a `SchedulerOutput` (plain data, `engine.step`) it brings its copy of the scheduled sequences up to
date (`SeqStates`), flattens them into varlen tensors (token ids, positions, `cu_seqlens_q`, `seq_lens`, block
tables, slot mapping), runs the model, computes logits only for the rows that sample, and samples. It keeps
no scheduling state, so the same class runs as each of N tensor-parallel ranks (`engine.executor`): every
rank receives the same `SchedulerOutput`, holds its shard of the weights and its KV heads' cache with the
same block tables, and rank 0 alone samples.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from . import cpu_allocator
from ..attention import build_attention_metadata, get_attention_backend
from ..config import EngineConfig
from ..models.loader import build_model
from ..models.parallel import TPContext
from ..quantization import quantize_model
from ..quantization.kv_cache import allocate_kv_cache
from ..quantization.sizing import bytes_saved
from ..sample.sampler import Sampler, SamplingRow
from ..step import RunnerOutput, SchedulerOutput
from .host_batch import HostBatch, build_host_batch, profile_batch
from .kv_sizing import decide_num_blocks
from .seq_states import SeqState, SeqStates

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, tp: TPContext | None = None):
        """`tp`: this rank's shard and process group under tensor parallelism (None: the whole model)."""
        self.config = config
        self.tp = tp
        self.device = config.device
        self.block_size = config.cache.block_size
        mc = config.model
        if self.device.type == "cpu":
            if config.cpu_threads is not None:
                torch.set_num_threads(config.cpu_threads)  # process-wide: this process is the worker
            cpu_allocator.keep_freed_memory()  # process-wide too: reuse activation pages across steps
        t0 = time.perf_counter()
        torch.manual_seed(config.seed)
        self.model = build_model(mc, self.device, seed=config.seed, tp=tp)
        self.weight_report = quantize_model(self.model, mc.quantization)  # at load time; frees the fp weights
        logger.info("Model %s", self.weight_report.describe())
        self.num_kv_heads = mc.num_kv_heads if tp is None else tp.shard.num_kv_heads
        if tp is not None:
            tp.comm.wait_for_all()  # ranks load at their own pace; the first forward's collectives must not time out
        self.load_time_s = time.perf_counter() - t0
        self.backend = get_attention_backend(config.attention_backend)
        self.sampler = Sampler(self.device, config.seed)
        self.seqs = SeqStates()
        self.graphs = None
        self.num_kv_blocks = self._decide_num_blocks()
        self.kv_caches = [allocate_kv_cache(self.num_kv_blocks, self.block_size, self.num_kv_heads, mc.head_dim,
                                            mc.kv_cache, mc.dtype, self.device) for _ in range(mc.num_layers)]
        self.model.bind_kv_cache(self.kv_caches)
        if not config.enforce_eager and self.device.type == "cuda" and self.backend.name == "triton":
            from .cuda_graphs import DecodeGraphs

            t0 = time.perf_counter()
            self.graphs = DecodeGraphs(self.model, self.backend, config)
            logger.info("Captured %d decode CUDA graphs in %.1f s", len(self.graphs.sizes), time.perf_counter() - t0)
        tokens = self.num_kv_blocks * self.block_size
        logger.info("KV cache: %d blocks = %d tokens; max concurrency at max_model_len: %.2f (%.1f MiB, %d B/token, %s)",
                    self.num_kv_blocks, tokens, tokens / mc.max_model_len,
                    self.num_kv_blocks * self.block_bytes / 2**20, mc.kv_bytes_per_token,
                    str(mc.dtype).removeprefix("torch.") if not mc.kv_cache.quantized else mc.kv_cache.name)

    # ---- KV-cache sizing -------------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """Bytes of one block in this rank's cache (its KV heads)."""
        mc = self.config.model
        return self.block_size * mc.kv_bytes_per_token * self.num_kv_heads // mc.num_kv_heads

    def _decide_num_blocks(self) -> int:
        if self.device.type == "cuda":
            blocks = decide_num_blocks(self.config, self.block_bytes, self._profile_gpu_blocks)
            return blocks if self.tp is None else self.tp.comm.min_int(blocks)  # every rank, the same tables
        # The CPU budget is for all ranks' caches together (they share the machine's memory); every rank
        # computes the same count from the shard plan, no communication needed.
        heads = self.num_kv_heads if self.tp is None else self.tp.kv_heads_all_ranks
        all_ranks = self.block_size * self.config.model.kv_bytes_per_token * heads // self.config.model.num_kv_heads
        # Weight bytes freed by quantization go to the cache: the same total memory holds more tokens. The
        # saving comes from the shapes (not this rank's measurement), so every rank computes the same count.
        cache = self.config.cache
        saved = bytes_saved(self.config.model, self.config.model.quantization)
        config = dataclasses.replace(self.config, cache=dataclasses.replace(
            cache, cpu_kv_cache_bytes=cache.cpu_kv_cache_bytes + saved))
        return decide_num_blocks(config, all_ranks, None)

    @torch.no_grad()
    def _profile_gpu_blocks(self) -> int:
        """Run the largest step the scheduler can produce, measure peak memory, and return how many blocks
        fit in what is left of `gpu_memory_utilization` x total memory."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        mc = self.config.model
        tiny = allocate_kv_cache(1, self.block_size, self.num_kv_heads, mc.head_dim, mc.kv_cache, mc.dtype, self.device)
        self.model.bind_kv_cache([tiny] * mc.num_layers)
        sc = self.config.scheduler
        hb = profile_batch(sc.max_num_batched_tokens, mc.max_model_len, self.block_size, sc.max_num_seqs)
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
    def prepare_host(self, out: SchedulerOutput, states: list[SeqState]) -> HostBatch:
        return build_host_batch(out.seqs, states, self.block_size)

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
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        """Run one step: bring the worker's sequences up to date, run the model, sample."""
        states = self.seqs.update(out)
        self.sampler.forget(out.finished_ids)
        if not out.seqs:
            return RunnerOutput.empty()
        hb = self.prepare_host(out, states)
        hidden = self.forward(hb)
        if not hb.sample_idx:
            return RunnerOutput.empty()
        logits = self.model.compute_logits(hidden)
        if logits is None:  # a tensor-parallel rank > 0: it sent its logits to rank 0, which samples
            return RunnerOutput.empty()
        rows = []
        for i in hb.sample_idx:
            st = states[i]
            rows.append(SamplingRow(st.request_id, st.sampling, st.token_ids, st.num_prompt_tokens,
                                    st.sampling.forbidden_now(st.num_output_tokens)))
        result = self.sampler(logits, rows)
        return RunnerOutput(tuple(r.request_id for r in rows), tuple((t,) for t in result.token_ids),
                            tuple(None if lp is None else (lp,) for lp in result.logprobs))
