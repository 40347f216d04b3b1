"""The model runner: a worker that owns the model weights and the KV-cache tensors and runs one step.

Given a `SchedulerOutput` (plain data, `engine.step`) it brings its copy of the scheduled sequences up to
date (`SeqStates`), flattens them into varlen arrays on the host (`HostBatchBuilder`), uploads those and the
sampling rows' parameters with ONE host-to-device copy (`StagingBuffer`), runs the model (from a CUDA graph
for decode steps on a GPU; on a CPU, a decode step of an int8 / w8a8 Llama-shaped model as one C call:
`cpu_decode.py`), computes logits only for the rows that sample, samples on the device
(`engine.sample.sampler`) and starts ONE device-to-host copy of the sampled ids (`ReadbackBuffer`).

`execute_async(out)` returns as soon as that work is queued on the device, with a `PendingOutput` whose
`result()` waits for the copy; `execute(out)` is both at once. A decode token this worker sampled in the
previous step and the engine has not sent back yet (asynchronous scheduling) is read on the device from the
previous step's sampled-token tensor, so the engine can schedule step N+1 before it knows step N's tokens.

It keeps no scheduling state, so the same class runs as each of N tensor-parallel ranks (`engine.executor`):
every rank receives the same `SchedulerOutput`, holds its shard of the weights and its KV heads' cache with
the same block tables, and rank 0 alone samples (asynchronous scheduling is off then: the other ranks never
hold rank 0's samples).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from . import cpu_allocator, cpu_threads, prompt_logprobs
from .cpu_decode import CpuDecodeStep, Unsupported
from ..attention import AttentionMetadata, get_attention_backend
from ..config import EngineConfig
from ..models.loader import build_model
from ..models.parallel import TPContext
from ..quantization import quantize_model
from ..quantization.apply import weight_bytes
from ..quantization.int8 import Int8Linear
from ..quantization.w8a8 import W8A8Linear
from ..quantization.kv_cache import allocate_kv_cache
from ..quantization.sizing import bytes_saved
from ..sample.sampler import Sampler, SamplingBatch, unpack
from ..sample.tables import PenaltyCounts, SamplingTable
from ..spec_decode.draft_model import draft_block_bytes
from ..spec_decode.penalties import draft_penalty_arrays, kept_rows, with_prior_drafts
from ..spec_decode.verify import accepted_tokens
from ..step import RunnerOutput, SchedulerOutput
from .host_batch import HostBatch, HostBatchBuilder, profile_batch
from .kv_sizing import decide_num_blocks
from .seq_states import SeqStates
from .staging import Readback, ReadbackBuffer, StagingBuffer

logger = logging.getLogger(__name__)


class PendingOutput:
    """A step's sampled tokens on their way to the host."""

    @classmethod
    def ready(cls, result: RunnerOutput) -> "PendingOutput":
        """An output already on the host (a step that ran synchronously)."""
        pending = cls()
        pending._result = result
        return pending

    def __init__(self, request_ids: tuple[str, ...] = (), batch: SamplingBatch | None = None,
                 readback: Readback | None = None, drafts: tuple[tuple[int, ...], ...] | None = None,
                 prompt_plan: prompt_logprobs.PromptRowPlan | None = None):
        """`drafts`: each sampling sequence's draft tokens (speculative decoding), None when none has any.
        `prompt_plan`: the step's prompt-logprob rows, whose values follow the sampled ones in the readback."""
        self._request_ids, self._batch, self._readback = request_ids, batch, readback
        self._drafts = drafts
        self._prompt_plan = prompt_plan
        self._result: RunnerOutput | None = None

    def result(self) -> RunnerOutput:
        """Wait for the step's device-to-host copy; the tokens (and logprobs) in batch order."""
        if self._result is None:
            packed = self._readback.ready() if self._readback is not None else None
            prompt = ()
            if self._prompt_plan is not None:
                tail = 0 if self._batch is None else self._batch.packed_size()
                prompt = prompt_logprobs.unpack(packed[tail:], self._prompt_plan)
            if not self._request_ids:
                self._result = RunnerOutput((), (), (), prompt)
            elif self._drafts is None:
                tokens, logprobs = unpack(packed, self._batch)
                self._result = RunnerOutput(self._request_ids, tuple((t,) for t in tokens),
                                            tuple(None if lp is None else (lp,) for lp in logprobs), prompt)
            else:
                self._result = self._verified(packed, prompt)
        return self._result

    def _verified(self, packed, prompt) -> RunnerOutput:
        """Speculative decoding: each sequence's rows (one per position) cut to the accepted drafts plus one."""
        tokens, logprobs = unpack(packed, self._batch)
        out_tokens, out_logprobs = [], []
        row = 0
        for drafts in self._drafts:
            rows = len(drafts) + 1
            kept = accepted_tokens(tokens[row:row + rows], drafts)
            out_tokens.append(tuple(kept))
            lps = logprobs[row:row + len(kept)]
            out_logprobs.append(None if lps[0] is None else tuple(lps))
            row += rows
        return RunnerOutput(self._request_ids, tuple(out_tokens), tuple(out_logprobs), prompt)


class ModelRunner:
    def __init__(self, config: EngineConfig, tp: TPContext | None = None):
        """`tp`: this rank's shard and process group under tensor parallelism (None: the whole model)."""
        self.config = config
        self.tp = tp
        self.device = config.device
        self.block_size = config.cache.block_size
        mc = config.model
        if self.device.type == "cpu":
            cpu_threads.configure(config.cpu_threads)  # process-wide: this process is the worker
            cpu_allocator.keep_freed_memory()  # process-wide too: reuse activation pages across steps
        t0 = time.perf_counter()
        torch.manual_seed(config.seed)
        self.model = build_model(mc, self.device, seed=config.seed, tp=tp)
        report = quantize_model(self.model, mc.quantization)  # at load time; frees the fp weights
        self.backend = get_attention_backend(config.attention_backend)
        self.cpu_kernel = self._attach_cpu_kernel()  # before the report: w8a8's kernel copy counts as weights
        self.weight_report = dataclasses.replace(report, bytes_after=weight_bytes(self.model))
        logger.info("Model %s", self.weight_report.describe())
        self.num_kv_heads = mc.num_kv_heads if tp is None else tp.shard.num_kv_heads
        if tp is not None:
            tp.comm.wait_for_all()  # ranks load at their own pace; the first forward's collectives must not time out
        self.load_time_s = time.perf_counter() - t0
        kernel = getattr(self.backend, "decode_kernel", None)
        if kernel is None:
            logger.info("Attention backend %s", self.backend.name)
        elif mc.dtype != torch.float32:  # the kernel takes float32 queries (kernels/cpu/paged_decode.py)
            logger.info("Attention backend %s: its decode kernel takes float32, the model runs in %s: decoding with "
                        "torch", self.backend.name, str(mc.dtype).removeprefix("torch."))
        else:
            logger.info("Attention backend %s (decode kernel %s)", self.backend.name, kernel.library.name)
        max_seqs = config.scheduler.max_num_seqs
        self.seqs = SeqStates()
        self.group_windows = mc.group_windows  # one sliding window (or None) per KV-cache group
        self.batches = HostBatchBuilder(self.block_size, max_seqs, -(-mc.max_model_len // self.block_size),
                                        len(self.group_windows))
        self.sampler = Sampler(self.device, config.seed)
        self.sampling = SamplingTable(mc.vocab_size, config.seed, max_seqs)
        self.penalties = PenaltyCounts(mc.vocab_size, self.device)
        self.staging = StagingBuffer(self.device)
        self.readback = ReadbackBuffer(self.device)
        # the previous step's sampled tokens (on the device) and each sampling sequence's row among them
        self._prev_tokens: torch.Tensor | None = None
        self._prev_rows: dict[str, int] = {}
        self.graphs = None
        self.num_kv_blocks = self._decide_num_blocks()
        self.kv_caches = [allocate_kv_cache(self.num_kv_blocks, self.block_size, self.num_kv_heads, mc.head_dim,
                                            mc.kv_cache, mc.dtype, self.device) for _ in range(mc.num_kv_tensors)]
        self.model.bind_kv_cache(self.kv_caches)
        self.cpu_decode = self._cpu_decode_step()
        if not config.enforce_eager and self.device.type == "cuda" and self.backend.name == "triton" \
                and len(self.group_windows) == 1:  # several KV-cache groups run eagerly
            from .cuda_graphs import DecodeGraphs

            t0 = time.perf_counter()
            self.graphs = DecodeGraphs(self.model, self.backend, config)
            logger.info("Captured %d decode CUDA graphs in %.1f s", len(self.graphs.graphs), time.perf_counter() - t0)
        tokens = self.num_kv_blocks * self.block_size
        logger.info("KV cache: %d blocks = %d tokens; max concurrency at max_model_len: %.2f (%.1f MiB, %d B/token, %s)",
                    self.num_kv_blocks, tokens, tokens / mc.max_model_len,
                    self.num_kv_blocks * self.block_bytes / 2**20, mc.kv_bytes_per_token,
                    mc.kv_storage_name)
        if config.draft_model is not None:
            draft = draft_block_bytes(config)
            logger.info("KV cache budget shared with the draft model %s: %d blocks of %d B each (target %d B + "
                        "draft %d B per block; %.1f MiB for the draft's cache)", config.draft_model.name,
                        self.num_kv_blocks, self.block_bytes + draft, self.block_bytes, draft,
                        self.num_kv_blocks * draft / 2**20)

    def _attach_cpu_kernel(self):
        """On the CPU with float32 activations: the int8 and w8a8 projections' decode-sized products in kvserve's
        C kernel (kernels/cpu/decode_step.c). The kernel, or None (not that case, or no C compiler: logged)."""
        int8 = [m for m in self.model.modules() if isinstance(m, (Int8Linear, W8A8Linear))]
        if self.device.type != "cpu" or self.config.model.dtype != torch.float32 or not int8:
            return None
        from kernels.cpu import CpuKernelUnavailable, load_decode_step, load_paged_decode

        try:
            kernel = load_decode_step(getattr(self.backend, "decode_kernel", None) or load_paged_decode())
        except CpuKernelUnavailable as e:
            logger.info("int8 projections: PyTorch's kernels (no C kernel: %s)", e)
            return None
        for m in int8:
            m.use_cpu_kernel(kernel)
        return kernel

    def _cpu_decode_step(self) -> CpuDecodeStep | None:
        """Unless enforce_eager, pure-decode steps as one C call where the model allows
        (engine/worker/cpu_decode.py); logged either way."""
        kernel = self.cpu_kernel
        if kernel is None:
            return None
        if self.config.enforce_eager:
            reason = "enforce_eager"
        elif getattr(self.backend, "decode_kernel", None) is None:
            reason = f"attention backend {self.backend.name} (the C step calls the cpu backend's kernel)"
        else:
            try:
                step = CpuDecodeStep.create(self.model, kernel, self.block_size, self.group_windows)
                logger.info("Decode steps: one C call (%s)", kernel.library.name)
                return step
            except Unsupported as e:
                reason = str(e)
        logger.info("int8 projections in the C kernel (%s); decode steps run the model's forward: %s",
                    kernel.library.name, reason)
        return None

    # ---- KV-cache sizing -------------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """Bytes of one block in this rank's cache (its KV heads)."""
        mc = self.config.model
        return self.block_size * mc.kv_bytes_per_token * self.num_kv_heads // mc.num_kv_heads

    def _decide_num_blocks(self) -> int:
        # a speculative draft model's cache has as many blocks as this one: the budget pays for both
        draft = draft_block_bytes(self.config)
        if self.device.type == "cuda":
            blocks = decide_num_blocks(self.config, self.block_bytes + draft, self._profile_gpu_blocks)
            return blocks if self.tp is None else self.tp.comm.min_int(blocks)  # every rank, the same tables
        # The CPU budget is for all ranks' caches together (they share the machine's memory); every rank
        # computes the same count from the shard plan, no communication needed.
        heads = self.num_kv_heads if self.tp is None else self.tp.kv_heads_all_ranks
        all_ranks = self.block_size * self.config.model.kv_bytes_per_token * heads // self.config.model.num_kv_heads
        # Weight bytes freed by quantization go to the cache: the same total memory holds more tokens. The
        # saving comes from the shapes (not this rank's measurement), so every rank computes the same count.
        cache = self.config.cache
        saved = bytes_saved(self.config.model, self.config.model.quantization, kernel_copy=self.cpu_kernel is not None)
        config = dataclasses.replace(self.config, cache=dataclasses.replace(
            cache, cpu_kv_cache_bytes=cache.cpu_kv_cache_bytes + saved))
        return decide_num_blocks(config, all_ranks + draft, None)

    @torch.no_grad()
    def _profile_gpu_blocks(self) -> int:
        """Run the largest step the scheduler can produce, measure peak memory, and return how many blocks
        fit in what is left of `gpu_memory_utilization` x total memory."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        mc = self.config.model
        tiny = allocate_kv_cache(1, self.block_size, self.num_kv_heads, mc.head_dim, mc.kv_cache, mc.dtype, self.device)
        self.model.bind_kv_cache([tiny] * mc.num_kv_tensors)
        sc = self.config.scheduler
        hb = profile_batch(sc.max_num_batched_tokens, mc.max_model_len, self.block_size, sc.max_num_seqs,
                           len(mc.group_windows))
        self.model.compute_logits(self.forward(hb))  # called before any graph exists: runs eagerly
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        budget = total * self.config.cache.gpu_memory_utilization - peak - (total - free - torch.cuda.memory_reserved(self.device))
        blocks = int(budget // (self.block_bytes + draft_block_bytes(self.config)))
        if blocks < 1:
            raise RuntimeError(f"gpu_memory_utilization: no memory left for the KV cache (peak {peak / 2**30:.1f} GiB)")
        return blocks

    # ---- one step --------------------------------------------------------------------------------------------
    def forward(self, hb: HostBatch) -> torch.Tensor:
        """Hidden states of `hb`'s logits rows (uploads `hb` on its own: for the memory profile and tests)."""
        size = self._graph_size(hb)
        views = self.staging.upload(self._model_arrays(hb, size))
        return self._run_model(hb, views, size)

    def _graph_size(self, hb: HostBatch) -> int | None:
        return self.graphs.size_for(hb) if self.graphs is not None else None

    @staticmethod
    def _model_arrays(hb: HostBatch, size: int | None) -> list[np.ndarray]:
        """What the forward pass reads, in upload order. For a CUDA-graph replay of `size` rows the arrays are
        padded to `size` (padding rows: token 0 at position 0, slot -1 so nothing is stored, context 0)."""
        ids, pos, slots, seq_lens, tables = hb.input_ids, hb.positions, hb.slot_mapping, hb.seq_lens, hb.block_tables
        cu = hb.cu_seqlens_q
        if size is not None and size > len(ids):
            pad = size - len(ids)
            zeros = np.zeros(pad, dtype=np.int64)
            ids, pos = np.concatenate([ids, zeros]), np.concatenate([pos, zeros])
            seq_lens = np.concatenate([seq_lens, zeros])
            slots = np.concatenate([slots, np.full(pad, -1, dtype=np.int64)])
            tables = np.concatenate([tables, np.zeros((pad, tables.shape[1]), dtype=np.int32)])
            cu = np.arange(size + 1, dtype=np.int32)
        arrays = [ids, pos, slots, cu, seq_lens.astype(np.int32), tables, hb.logits_indices, hb.pending_dst,
                  hb.pending_src]
        for more_tables, more_slots in hb.more_groups:  # several KV-cache groups run eagerly: no padding
            arrays += [more_tables, more_slots]
        return arrays

    def _run_model(self, hb: HostBatch, views: list[torch.Tensor], size: int | None) -> torch.Tensor:
        ids, pos, slots, cu, seq_lens, tables, logits_indices, pending_dst, pending_src = views[:9]
        if len(hb.pending_dst):  # decode inputs sampled by the previous step, taken on the device
            ids.index_copy_(0, pending_dst, self._prev_tokens.index_select(0, pending_src))
        if size is not None:
            hidden = self.graphs.run(ids, pos, slots, seq_lens, tables, len(hb.query_lens), int(hb.seq_lens.max()))
        else:
            host_groups = [(hb.block_tables, hb.slot_mapping)] + list(hb.more_groups)
            groups = [(tables, slots)] + list(zip(views[9::2], views[10::2]))
            metas = []
            for window, (host_table, host_slots), (table, slot_mapping) in zip(self.group_windows, host_groups,
                                                                                 groups):
                plan = self.backend.plan(hb.query_lens, hb.seq_lens, host_table, self.block_size, self.device,
                                         self.config.model.dtype, sliding_window=window)
                metas.append(AttentionMetadata(
                    slot_mapping=slot_mapping, block_tables=table, cu_seqlens_q=cu, seq_lens=seq_lens,
                    max_query_len=int(hb.query_lens.max()), max_seq_len=int(hb.seq_lens.max()),
                    num_decode_only=hb.decode_only, plan=plan, sliding_window=window,
                    skips_slots=bool((host_slots < 0).any())))
            native = metas[0].plan.native if self.cpu_decode is not None and len(metas) == 1 else None
            if native is not None and native.every_row:  # every row decodes: the whole step in one C call
                hidden = self.cpu_decode.run(ids, pos, slots, native)
            else:
                meta = metas[0] if len(metas) == 1 else tuple(metas)  # layers pick their group's
                hidden = self.model(ids, pos, meta, self.backend)
        return hidden.index_select(0, logits_indices)

    @torch.inference_mode()
    def execute_async(self, out: SchedulerOutput) -> PendingOutput:
        """Queue one step on the device: bring the worker's sequences up to date, upload, run the model,
        sample. Returns once the work is queued; `result()` of what it returns waits for the tokens."""
        states = self.seqs.update(out)
        fresh = [st for st in self.seqs.new_states]
        for st in fresh:
            self.sampling.set(st.slot, st.sampling)
        fresh = [st for st in fresh if self.sampling.has_penalties(st.slot)]
        if not out.seqs:
            self._prev_tokens, self._prev_rows = None, {}
            return PendingOutput()
        hb = self.batches.build(out.seqs, states, self._prev_rows)
        size = self._graph_size(hb)
        arrays = self._model_arrays(hb, size)
        num_model = len(arrays)
        # prompt logprobs: their token rows' hidden states come out of the forward after the sampling rows
        prompt_plan = prompt_logprobs.plan(out.seqs, states, hb.query_lens)
        num_sample_rows = len(hb.logits_indices)
        if prompt_plan is not None:
            arrays[6] = np.concatenate([hb.logits_indices, prompt_plan.rows])  # _model_arrays' logits_indices
        sb = None
        if len(hb.sample_idx):
            sb = self.sampling.batch(hb.row_slots, hb.out_pos)  # one row per position sampled
            arrays += sb.arrays()
        num_grammar = 0
        if sb is not None and out.grammar is not None:  # structured output: a bitmask row per sampling row
            # a sequence's first sampling row (sequences with a grammar get no drafts, so it is their only one)
            first_row = (np.arange(len(hb.sample_idx)) if not len(hb.row_counts)
                         else np.concatenate([[0], np.cumsum(hb.row_counts)[:-1]]))
            rows = {out.seqs[i].request_id: int(first_row[j]) for j, i in enumerate(hb.sample_idx.tolist())}
            bitmask = np.full((len(hb.out_pos), out.grammar.bitmask.shape[1]), -1, dtype=np.int32)
            bitmask[[rows[rid] for rid in out.grammar.request_ids]] = out.grammar.bitmask
            arrays.append(bitmask)
            num_grammar = 1
        spec_pen = sb is not None and sb.num_penalized and len(hb.row_counts)
        if spec_pen:  # penalties at draft positions (engine.spec_decode.penalties)
            drafts = tuple(out.seqs[i].draft_token_ids for i in hb.sample_idx.tolist())
            arrays += draft_penalty_arrays(hb.row_counts, drafts, sb.pen_rows)
        if fresh:
            arrays += PenaltyCounts.init_arrays([st.slot for st in fresh], [st.token_ids for st in fresh],
                                                [st.num_prompt_tokens for st in fresh], self.config.model.vocab_size)
        if prompt_plan is not None:
            arrays.append(prompt_plan.targets)
        views = self.staging.upload(arrays)  # the step's one host-to-device copy
        hidden = self._run_model(hb, views[:num_model], size)
        prompt_packed = None
        if prompt_plan is not None:
            hidden, prompt_hidden = hidden[:num_sample_rows], hidden[num_sample_rows:]
            prompt_packed = prompt_logprobs.compute(prompt_hidden, views[-1], prompt_plan.k,
                                                    self.model.compute_logits)
            views = views[:-1]
            if prompt_packed is None:  # a tensor-parallel rank > 0: rank 0 has the values
                prompt_plan = None
        if fresh:
            self.penalties.ensure(self.seqs.num_slots)
            self.penalties.apply_init(*views[-5:])
        if sb is None:
            self._prev_tokens, self._prev_rows = None, {}
            if prompt_plan is None:
                return PendingOutput()
            return PendingOutput(readback=self.readback.download(prompt_packed), prompt_plan=prompt_plan)
        logits = self.model.compute_logits(hidden)
        if logits is None:  # a tensor-parallel rank > 0: it sent its logits to rank 0, which samples
            self._prev_tokens, self._prev_rows = None, {}
            return PendingOutput()
        num_sampling = num_model + len(SamplingBatch.ARRAYS)
        batch = sb.with_arrays(views[num_model:num_sampling])
        bitmask = views[num_sampling] if num_grammar else None
        gather = self.penalties.gather
        if spec_pen:
            next_draft, row_first, extra_idx, extra_tok = views[num_sampling + num_grammar:num_sampling + num_grammar + 4]
            gather = with_prior_drafts(gather, extra_idx, extra_tok)
        result = self.sampler.sample(logits, batch, gather, bitmask)
        if spec_pen:  # count only the tokens verification keeps
            kept = kept_rows(result.tokens, next_draft, row_first).index_select(0, batch.pen_rows)
            self.penalties.add(batch.pen_slots[kept], result.tokens.index_select(0, batch.pen_rows)[kept])
        elif sb.num_penalized:
            self.penalties.add(batch.pen_slots, result.tokens.index_select(0, batch.pen_rows))
        sampled = [out.seqs[i] for i in hb.sample_idx.tolist()]
        request_ids = tuple(s.request_id for s in sampled)
        drafts = None
        if len(hb.row_counts):  # speculative decoding (never with asynchronous scheduling: no pending rows)
            drafts = tuple(s.draft_token_ids for s in sampled)
            self._prev_tokens, self._prev_rows = None, {}
        else:
            self._prev_tokens, self._prev_rows = result.tokens, {rid: j for j, rid in enumerate(request_ids)}
        packed = result.packed if prompt_packed is None else torch.cat([result.packed, prompt_packed])
        # the one device-to-host copy
        return PendingOutput(request_ids, sb, self.readback.download(packed), drafts, prompt_plan)

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        """Run one step and wait for its tokens."""
        return self.execute_async(out).result()
