"""`DraftProposer`: drafts from a smaller model with its own paged KV cache, batched across sequences.

The draft runs in the engine's process, on the host-driven path the n-gram proposer uses: before each step the
engine asks it for drafts for the decoding requests, and it runs k forward passes of its model over all of
them together (one varlen pass, then k - 1 passes of one token per sequence), taking the argmax at each:

    tokens t_0 .. t_{N-1} known, the draft's cache holds t_0 .. t_{c-1}:
    pass 1:  t_c .. t_{N-1}  at positions c .. N-1   -> d_1   (catch-up: the last step's accepted + bonus tokens)
    pass i:  d_{i-1}         at position  N + i - 2  -> d_i   (i = 2 .. k)

Its cache then holds t_0 .. t_{N-1}, d_1 .. d_{k-1}. The draft keeps its own copy of the tokens it holds;
after verification (`sync`) it keeps the longest prefix that matches the sequence's real tokens (the accepted
drafts) and frees the blocks past it, so the next pass 1 computes only what changed. A preempted or finished
sequence's draft state is dropped (`free`): when it runs again the draft prefills it from scratch.

Why argmax: a deterministic draft is a point-mass proposal, for which the verifier's rule (sample the target
at every position, keep drafts while they equal the sample) is exact rejection sampling (spec_decode/verify.py),
for greedy and temperature > 0 alike, with the target's seeded noise unchanged. A sampled draft would need
the full min(1, p/q) rule with the draft's probabilities on the device; a small draft's argmax is also the
token most likely to be accepted.

Own block tables, own pool: the draft's `KVCacheManager` (no prefix cache: a draft recomputes a shared prompt,
cheap for a small model) has as many blocks as the target's, and the KV budget is split so that both caches
fit (`draft_block_bytes`, used by the runner's sizing). A sequence whose draft blocks run out gets no drafts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..attention import get_attention_backend
from ..attention.metadata import build_attention_metadata
from ..config import EngineConfig, ModelConfig
from ..core.kv_cache_manager import KVCacheManager
from ..models.loader import build_model
from ..quantization.kv_cache import allocate_kv_cache

logger = logging.getLogger(__name__)


def draft_block_bytes(config: EngineConfig) -> int:
    """Bytes one KV block of the draft's cache takes (0 without a draft model): the KV budget pays for a
    target block and a draft block together."""
    draft = config.draft_model
    return 0 if draft is None else config.cache.block_size * draft.kv_bytes_per_token


@dataclass(eq=False, slots=True)
class _DraftSeq:
    """One sequence as the draft's KV manager sees it, and the tokens whose K/V the draft cache holds."""

    request_id: str
    num_computed_tokens: int = 0
    tokens: list[int] | None = None  # what positions 0 .. num_computed_tokens - 1 hold
    num_known: int = 0  # of those, the leading ones that were real tokens when written (never change)


class DraftProposer:
    def __init__(self, cfg: ModelConfig, device: torch.device, attention_backend: str, seed: int = 0):
        """Loads the draft's weights (before the target sizes its cache, so a GPU profile counts them)."""
        t0 = time.perf_counter()
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg, device, seed=seed)
        self.backend = get_attention_backend(attention_backend)
        self.kv: KVCacheManager | None = None
        self.block_size = 0
        self._seqs: dict[str, _DraftSeq] = {}
        logger.info("Draft model %s: %d layers, loaded in %.1f s", cfg.name, cfg.num_layers, time.perf_counter() - t0)

    def allocate(self, num_blocks: int, block_size: int) -> None:
        """The draft's own paged cache: `num_blocks` blocks, like the target's."""
        cfg = self.cfg
        self.block_size = block_size
        self.kv = KVCacheManager(num_blocks, block_size, enable_caching=False)
        self.kv_caches = [allocate_kv_cache(num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, cfg.kv_cache,
                                            cfg.dtype, self.device) for _ in range(cfg.num_kv_tensors)]
        self.model.bind_kv_cache(self.kv_caches)

    # ---- per sequence ----------------------------------------------------------------------------------------
    def num_computed(self, request_id: str) -> int:
        seq = self._seqs.get(request_id)
        return 0 if seq is None else seq.num_computed_tokens

    def sync(self, request_id: str, token_ids: list[int]) -> None:
        """Keep the longest prefix of the draft's cached tokens that `token_ids` (the sequence's real tokens)
        confirms, at least one token short of them (the last one's logits are what the next pass needs), and
        free the draft blocks past it."""
        seq = self._seqs.get(request_id)
        if seq is None or seq.tokens is None:
            return
        held, upto = seq.tokens, min(seq.num_computed_tokens, len(token_ids) - 1)
        c = min(seq.num_known, upto)
        while c < upto and held[c] == token_ids[c]:
            c += 1
        del held[c:]
        seq.num_computed_tokens = c
        self.kv.trim(seq)

    def free(self, request_id: str) -> None:
        """The sequence finished or was preempted: its draft blocks go back (a resumed one is prefilled again)."""
        seq = self._seqs.pop(request_id, None)
        if seq is not None:
            self.kv.free(seq)

    # ---- proposing ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, wanted: list[tuple[str, list[int], int]]) -> dict[str, list[int]]:
        """Drafts for each (request id, its token ids, how many drafts) that the draft's cache has room for."""
        runs: list[tuple[_DraftSeq, list[int], int, int]] = []  # (seq, tokens, k, first position to compute)
        for rid, tokens, k in wanted:
            if k < 1:
                continue
            seq = self._seqs.setdefault(rid, _DraftSeq(rid))
            self.sync(rid, tokens)
            start = seq.num_computed_tokens
            if self.kv.allocate_slots(seq, len(tokens) - start + k - 1) is None:
                continue  # no draft blocks free: this sequence decodes without drafts this step
            runs.append((seq, tokens, k, start))
        if not runs:
            return {}
        first = self._forward([tokens[start:] for _, tokens, _, start in runs],
                              [start for *_, start in runs], [seq for seq, *_ in runs])
        drafts = {seq.request_id: [d] for (seq, *_), d in zip(runs, first)}
        for i in range(1, max(k for _, _, k, _ in runs)):
            live = [(seq, tokens) for seq, tokens, k, _ in runs if k > i]
            nxt = self._forward([[drafts[seq.request_id][-1]] for seq, _ in live],
                                [len(tokens) + i - 1 for _, tokens in live], [seq for seq, _ in live])
            for (seq, _), d in zip(live, nxt):
                drafts[seq.request_id].append(d)
        for seq, tokens, k, start in runs:
            if seq.tokens is None:
                seq.tokens = []
            seq.tokens.extend(tokens[start:])
            seq.tokens.extend(drafts[seq.request_id][:k - 1])  # the last draft's K/V is never written
            seq.num_known = len(tokens)
            seq.num_computed_tokens = len(tokens) + k - 1
        return drafts

    def _forward(self, chunks: list[list[int]], starts: list[int], seqs: list[_DraftSeq]) -> list[int]:
        """One varlen pass: sequence s computes `chunks[s]` at positions starts[s] ..; returns the argmax
        token after each sequence's last one."""
        bs = self.block_size
        query_lens = np.array([len(c) for c in chunks], dtype=np.int64)
        seq_lens = np.array(starts, dtype=np.int64) + query_lens
        tables_list = [self.kv.block_ids(seq.request_id) for seq in seqs]
        width = max(len(t) for t in tables_list)
        tables = np.zeros((len(seqs), width), dtype=np.int32)
        for s, t in enumerate(tables_list):
            tables[s, :len(t)] = t
        positions = np.concatenate([np.arange(st, st + n) for st, n in zip(starts, query_lens.tolist())])
        seq_of = np.repeat(np.arange(len(seqs)), query_lens)
        slots = tables[seq_of, positions // bs].astype(np.int64) * bs + positions % bs
        ids = torch.tensor([t for c in chunks for t in c], dtype=torch.int64, device=self.device)
        plan = self.backend.plan(query_lens, seq_lens, tables, bs, self.device, self.cfg.dtype)
        meta = build_attention_metadata(query_lens, seq_lens, tables, slots, self.device, plan)
        hidden = self.model(ids, torch.from_numpy(positions).to(self.device), meta, self.backend)
        last = torch.from_numpy(np.cumsum(query_lens) - 1).to(self.device)
        logits = self.model.compute_logits(hidden.index_select(0, last))
        return logits.argmax(dim=-1).tolist()
