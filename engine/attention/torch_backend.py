"""Paged attention in plain torch: the CPU path and the engine-level oracle for the Triton kernels.

Per step it precomputes gather indices (a `TorchPlan`), so each layer does a few batched SDPA calls for
the decoding sequences (grouped by context length; each group's blocks gathered whole into a padded
[S, blocks x block_size] layout with a mask) and one SDPA call per prefilling sequence. Gathering whole blocks moves the same bytes as gathering slots
but with 1/block_size as many index operations. A prefill with no earlier context attends to its freshly computed K/V directly
(plain causal attention); a chunked prefill or a prefix-cache hit gathers its earlier keys from the cache.
When one decode group is the whole batch in order (always at one stream) its query rows are used in place,
not gathered and scattered back.

With a decode kernel (the "cpu" backend: kernels.cpu, compiled C) every decoding sequence of a float32 step
is attended in one call per layer that reads the blocks where they lie: no gather, no padding, no mask; the
prefills keep the torch path. The pure "torch" backend has no kernel and is the reference for it.

A sliding window (one per KV-cache group, in the metadata) narrows what is gathered to the blocks the window
reaches and masks older keys; soft-capped attention (Gemma 2) runs transformers' eager formula instead of SDPA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..quantization.config import kv_cache_dtype
from ..quantization.kv_cache import dequantize_kv, fake_quantize_kv, quantize_kv
from .metadata import AttentionMetadata
from .plans import DecodeGroup, PrefillSeq, TorchPlan

if TYPE_CHECKING:
    from kernels.cpu import PagedDecodeKernel


def _decode_groups(lengths: np.ndarray, max_groups: int = 4, min_group: int = 8) -> list[np.ndarray]:
    """Split decoding sequences, sorted by context length, into a few equal-count groups: each group is
    padded only to its own longest context, which cuts the padded gather and attention work, while a handful
    of groups keeps the per-layer call count small."""
    order = np.argsort(lengths, kind="stable")
    n = int(np.clip(len(order) // min_group, 1, max_groups))
    return [g for g in np.array_split(order, n) if len(g)]


def _additive(allowed: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive 0 / -inf mask SDPA would otherwise build from it in every layer."""
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(torch.from_numpy(~allowed), float("-inf"))
    return mask.to(device)


def _window_start(query_pos: np.ndarray, window: int | None) -> np.ndarray:
    """The oldest key a query at `query_pos` reads: query_pos - window + 1 (0 without a window)."""
    if window is None:
        return np.zeros_like(query_pos)
    return np.maximum(query_pos - window + 1, 0)


def _softcapped(q, k, v, mask, scale, cap):
    """Attention with soft-capped scores, as transformers' eager path computes it: scores * scale, then
    cap * tanh(scores / cap), then the mask, softmax in fp32. q [B, H, Lq, D]; k, v [B, KVH, Lk, D]; mask
    additive [.., Lq, Lk] or None for plain causal."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / cap) * cap
    if mask is None:
        lq, lk = scores.shape[-2], scores.shape[-1]
        mask = torch.full((lq, lk), float("-inf"), dtype=scores.dtype, device=scores.device).triu_(lk - lq + 1)
    probs = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def _attend(q, k, v, mask, scale, cap, causal=False):
    if cap is not None:
        return _softcapped(q, k, v, None if causal else mask, scale, cap)
    if causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


class TorchAttentionBackend:
    def __init__(self, decode_kernel: PagedDecodeKernel | None = None):
        """`decode_kernel`: the CPU decode kernel for float32 steps on the CPU (None: torch everywhere)."""
        self.decode_kernel = decode_kernel
        self.name = "torch" if decode_kernel is None else "cpu"

    def plan(self, query_lens: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray, block_size: int,
             device: torch.device, dtype: torch.dtype, sliding_window: int | None = None) -> TorchPlan:
        """Gather indices and masks for one step. With a sliding window only the blocks from the one holding
        the first query's oldest visible key on are gathered (older table entries may name released blocks),
        and keys older than each query's window are masked out."""
        cu = np.concatenate([[0], np.cumsum(query_lens)])
        decode = np.flatnonzero(query_lens == 1)
        groups, native = [], None
        if len(decode) and self.decode_kernel is not None and dtype == torch.float32 and device.type == "cpu":
            from kernels.cpu import DecodeBatch

            native = DecodeBatch.build(block_tables[decode], seq_lens[decode], cu[decode], num_query_rows=int(cu[-1]),
                                       sliding_window=sliding_window)
        for members in (_decode_groups(seq_lens[decode]) if len(decode) and native is None else []):
            idx = decode[members]
            lens = seq_lens[idx]
            first_key = _window_start(lens - 1, sliding_window)
            first_blk = first_key // block_size
            nblk = -(-lens // block_size) - first_blk
            bmax = int(nblk.max())
            cols = first_blk[:, None] + np.arange(bmax)[None, :]
            valid = np.arange(bmax)[None, :] < nblk[:, None]
            # padding columns repeat the sequence's first gathered block: a live block, never a released one
            blocks = block_tables[idx[:, None], np.where(valid, cols, first_blk[:, None])]
            key_pos = first_blk[:, None] * block_size + np.arange(bmax * block_size)[None, :]
            mask = (key_pos >= first_key[:, None]) & (key_pos < lens[:, None])
            rows = cu[idx]
            every_row = len(rows) == cu[-1] and bool((rows == np.arange(len(rows))).all())  # in batch order
            row_ids = None if every_row else torch.from_numpy(rows.astype(np.int64)).to(device)
            groups.append(DecodeGroup(len(rows), row_ids, torch.from_numpy(blocks.astype(np.int64).ravel()).to(device),
                                      _additive(mask[:, None, None, :], device, dtype)))
        prefills = []
        for s in np.flatnonzero(query_lens > 1):
            q_len, kv_len = int(query_lens[s]), int(seq_lens[s])
            q_pos = np.arange(kv_len - q_len, kv_len)
            windowed = sliding_window is not None and sliding_window < kv_len
            if q_len == kv_len:
                mask = None
                if windowed:
                    k_pos = np.arange(kv_len)
                    allowed = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= _window_start(q_pos, sliding_window)[:, None])
                    mask = _additive(allowed, device, dtype)
                prefills.append(PrefillSeq(int(cu[s]), int(cu[s + 1]), None, kv_len, mask))
                continue
            first_blk = int(_window_start(q_pos[:1], sliding_window)[0]) // block_size
            blocks = torch.from_numpy(block_tables[s, first_blk:-(-kv_len // block_size)].astype(np.int64)).to(device)
            k_pos = np.arange(first_blk * block_size, kv_len)
            allowed = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= _window_start(q_pos, sliding_window)[:, None])
            prefills.append(PrefillSeq(int(cu[s]), int(cu[s + 1]), blocks, len(k_pos), _additive(allowed, device, dtype)))
        return TorchPlan(tuple(groups), tuple(prefills), native)

    def store_kv(self, key, value, key_cache, value_cache, meta: AttentionMetadata, kv_scales=None) -> None:
        _, block_size, kvh, d = key_cache.shape
        slots = meta.slot_mapping
        if meta.skips_slots and len(slots) and int(slots.min()) < 0:  # slot -1 = skip this token (padding)
            keep = slots >= 0
            slots, key, value = slots[keep], key[keep], value[keep]
        if kv_scales is not None:  # an 8-bit cache: codes in the cache, one scale per (token, head) beside it
            spec = _spec_of(key_cache)
            (key, k_scale), (value, v_scale) = quantize_kv(key, spec), quantize_kv(value, spec)
            kv_scales[0].view(-1, kvh).index_copy_(0, slots, k_scale)
            kv_scales[1].view(-1, kvh).index_copy_(0, slots, v_scale)
            if spec.is_float8:  # torch's CPU index_copy_ has no fp8 kernel: copy the same bytes as uint8
                key_cache, value_cache = key_cache.view(torch.uint8), value_cache.view(torch.uint8)
                key, value = key.view(torch.uint8), value.view(torch.uint8)
        key_cache.view(-1, kvh, d).index_copy_(0, slots, key)
        value_cache.view(-1, kvh, d).index_copy_(0, slots, value)

    def attention(self, query, key, value, key_cache, value_cache, meta: AttentionMetadata, scale: float, *,
                  logit_softcap: float | None = None, kv_scales=None):
        plan: TorchPlan = meta.plan
        kvh, d = key_cache.shape[2], key_cache.shape[3]
        out = None  # the decode kernel's output, its rows filled, when it ran
        if plan.native is not None:
            out = torch.empty_like(query)
            k_scales, v_scales = kv_scales if kv_scales is not None else (None, None)
            self.decode_kernel(query, key_cache, value_cache, plan.native, scale, out, softcap=logit_softcap,
                               k_scales=k_scales, v_scales=v_scales)
            if plan.native.every_row:
                return out
        if kv_scales is not None:
            return self._attention_8bit(query, key, value, key_cache, value_cache, kv_scales, plan, scale, out)

        def decode(q, g: DecodeGroup):
            # The query heads sharing a KV head become that head's "query rows" (they attend to the same
            # keys at the same position), so SDPA reads each gathered K/V row once per KV head, not per head.
            q = q.view(g.num_seqs, kvh, -1, d)  # [Sg, KVH, H / KVH, D]
            # index_select copies whole blocks with memcpy: several times faster than advanced indexing
            k = key_cache.index_select(0, g.blocks).view(g.num_seqs, -1, kvh, d).transpose(1, 2)  # [Sg, KVH, L, D]
            v = value_cache.index_select(0, g.blocks).view(g.num_seqs, -1, kvh, d).transpose(1, 2)
            return _attend(q, k, v, g.mask, scale, logit_softcap).reshape(g.num_seqs, -1, d)

        if out is None:
            if _whole_batch(plan):
                return decode(query, plan.decodes[0])
            out = torch.empty_like(query)
        for g in plan.decodes:
            out.index_copy_(0, g.rows, decode(query.index_select(0, g.rows), g))
        for p in plan.prefills:
            # 4-D [1, heads, len, D] inputs: with 3-D ones torch's CPU SDPA falls back to its slow math path
            q = query[p.q_start:p.q_end].transpose(0, 1).unsqueeze(0)
            if p.kv_blocks is None:
                k = key[p.q_start:p.q_end].transpose(0, 1).unsqueeze(0)
                v = value[p.q_start:p.q_end].transpose(0, 1).unsqueeze(0)
            else:
                k = key_cache.index_select(0, p.kv_blocks).view(-1, kvh, d)[:p.kv_len].transpose(0, 1).unsqueeze(0)
                v = value_cache.index_select(0, p.kv_blocks).view(-1, kvh, d)[:p.kv_len].transpose(0, 1).unsqueeze(0)
            o = _attend(q, k, v, p.mask, scale, logit_softcap, causal=p.mask is None)
            out[p.q_start:p.q_end] = o[0].transpose(0, 1)
        return out

    def _attention_8bit(self, query, key, value, key_cache, value_cache, kv_scales, plan: TorchPlan, scale,
                        out: torch.Tensor | None = None):
        """The same attention over an 8-bit cache: gathered blocks are dequantized (codes x scales, in fp32,
        rounded once to the query's dtype) right after the gather; a prefill with no earlier context uses
        its own K/V quantized and dequantized, exactly what a later read of the cache returns. `out`: the
        output with the decode kernel's rows already in it (None: no kernel ran)."""
        kvh, d = key_cache.shape[2], key_cache.shape[3]
        spec, dtype = _spec_of(key_cache), query.dtype
        k_scales, v_scales = kv_scales

        def gather(cache, scales, blocks):
            return dequantize_kv(cache.index_select(0, blocks), scales.index_select(0, blocks), dtype)

        def decode(q, g: DecodeGroup):
            q = q.view(g.num_seqs, kvh, -1, d)
            k = gather(key_cache, k_scales, g.blocks).view(g.num_seqs, -1, kvh, d).transpose(1, 2)
            v = gather(value_cache, v_scales, g.blocks).view(g.num_seqs, -1, kvh, d).transpose(1, 2)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scale).reshape(g.num_seqs, -1, d)

        if out is None:
            if _whole_batch(plan):
                return decode(query, plan.decodes[0])
            out = torch.empty_like(query)
        for g in plan.decodes:
            out.index_copy_(0, g.rows, decode(query.index_select(0, g.rows), g))
        for p in plan.prefills:
            q = query[p.q_start:p.q_end].transpose(0, 1).unsqueeze(0)
            if p.kv_blocks is None:
                k = fake_quantize_kv(key[p.q_start:p.q_end], spec).transpose(0, 1).unsqueeze(0)
                v = fake_quantize_kv(value[p.q_start:p.q_end], spec).transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
            else:
                k = gather(key_cache, k_scales, p.kv_blocks).view(-1, kvh, d)[:p.kv_len].transpose(0, 1).unsqueeze(0)
                v = gather(value_cache, v_scales, p.kv_blocks).view(-1, kvh, d)[:p.kv_len].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask, scale=scale, enable_gqa=True)
            out[p.q_start:p.q_end] = o[0].transpose(0, 1)
        return out


def _whole_batch(plan: TorchPlan) -> bool:
    """Whether one decode group holds every query row in batch order: its attention output is the whole
    output, with no gather of its query rows and no scatter of its output rows."""
    return len(plan.decodes) == 1 and plan.decodes[0].rows is None


def _spec_of(cache: torch.Tensor):
    """The 8-bit format of a cache tensor, from its storage dtype."""
    return kv_cache_dtype({torch.int8: "int8", torch.float8_e4m3fn: "fp8_e4m3",
                           torch.float8_e5m2: "fp8_e5m2"}[cache.dtype])
