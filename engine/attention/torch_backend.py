"""Paged attention in plain torch: the CPU path and the engine-level oracle for the Triton kernels.

Per step it precomputes gather indices (a `TorchPlan`), so each layer does a few batched SDPA calls for
the decoding sequences (grouped by context length; each group's blocks gathered whole into a padded
[S, blocks x block_size] layout with a mask) and one SDPA call per prefilling sequence. Gathering whole blocks moves the same bytes as gathering slots
but with 1/block_size as many index operations. A prefill with no earlier context attends to its freshly computed K/V directly
(plain causal attention); a chunked prefill or a prefix-cache hit gathers its earlier keys from the cache.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..quantization.config import kv_cache_dtype
from ..quantization.kv_cache import dequantize_kv, fake_quantize_kv, quantize_kv
from .metadata import AttentionMetadata
from .plans import DecodeGroup, PrefillSeq, TorchPlan


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


class TorchAttentionBackend:
    name = "torch"

    def plan(self, query_lens: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray, block_size: int,
             device: torch.device, dtype: torch.dtype) -> TorchPlan:
        cu = np.concatenate([[0], np.cumsum(query_lens)])
        decode = np.flatnonzero(query_lens == 1)
        groups = []
        for members in (_decode_groups(seq_lens[decode]) if len(decode) else []):
            idx = decode[members]
            lens = seq_lens[idx]
            nblk = -(-lens // block_size)
            bmax = int(nblk.max())
            blocks = np.where(np.arange(bmax)[None, :] < nblk[:, None], block_tables[idx, :bmax], 0)
            mask = np.arange(bmax * block_size)[None, :] < lens[:, None]
            groups.append(DecodeGroup(torch.from_numpy(cu[idx].astype(np.int64)).to(device),
                                      torch.from_numpy(blocks.astype(np.int64).ravel()).to(device),
                                      _additive(mask[:, None, None, :], device, dtype)))
        prefills = []
        for s in np.flatnonzero(query_lens > 1):
            q_len, kv_len = int(query_lens[s]), int(seq_lens[s])
            if q_len == kv_len:
                prefills.append(PrefillSeq(int(cu[s]), int(cu[s + 1]), None, kv_len, None))
                continue
            blocks = torch.from_numpy(block_tables[s, :-(-kv_len // block_size)].astype(np.int64)).to(device)
            q_pos = np.arange(kv_len - q_len, kv_len)
            mask = _additive(np.arange(kv_len)[None, :] <= q_pos[:, None], device, dtype)
            prefills.append(PrefillSeq(int(cu[s]), int(cu[s + 1]), blocks, kv_len, mask))
        return TorchPlan(tuple(groups), tuple(prefills))

    def store_kv(self, key, value, key_cache, value_cache, meta: AttentionMetadata, kv_scales=None) -> None:
        _, block_size, kvh, d = key_cache.shape
        slots = meta.slot_mapping
        if len(slots) and int(slots.min()) < 0:  # slot -1 = skip this token (padding)
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

    def attention(self, query, key, value, key_cache, value_cache, meta: AttentionMetadata, scale: float,
                  kv_scales=None):
        plan: TorchPlan = meta.plan
        kvh, d = key_cache.shape[2], key_cache.shape[3]
        out = torch.empty_like(query)
        if kv_scales is not None:
            return self._attention_8bit(query, key, value, key_cache, value_cache, kv_scales, plan, scale, out)
        for g in plan.decodes:
            sd = g.rows.shape[0]
            # The query heads sharing a KV head become that head's "query rows" (they attend to the same
            # keys at the same position), so SDPA reads each gathered K/V row once per KV head, not per head.
            q = query.index_select(0, g.rows).view(sd, kvh, -1, d)  # [Sg, KVH, H / KVH, D]
            # index_select copies whole blocks with memcpy: several times faster than advanced indexing
            k = key_cache.index_select(0, g.blocks).view(sd, -1, kvh, d).transpose(1, 2)  # [Sg, KVH, L, D]
            v = value_cache.index_select(0, g.blocks).view(sd, -1, kvh, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scale)
            out.index_copy_(0, g.rows, o.reshape(sd, -1, d))
        for p in plan.prefills:
            # 4-D [1, heads, len, D] inputs: with 3-D ones torch's CPU SDPA falls back to its slow math path
            q = query[p.q_start:p.q_end].transpose(0, 1).unsqueeze(0)
            if p.kv_blocks is None:
                k = key[p.q_start:p.q_end].transpose(0, 1).unsqueeze(0)
                v = value[p.q_start:p.q_end].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
            else:
                k = key_cache.index_select(0, p.kv_blocks).view(-1, kvh, d)[:p.kv_len].transpose(0, 1).unsqueeze(0)
                v = value_cache.index_select(0, p.kv_blocks).view(-1, kvh, d)[:p.kv_len].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask, scale=scale, enable_gqa=True)
            out[p.q_start:p.q_end] = o[0].transpose(0, 1)
        return out

    def _attention_8bit(self, query, key, value, key_cache, value_cache, kv_scales, plan: TorchPlan, scale, out):
        """The same attention over an 8-bit cache: gathered blocks are dequantized (codes x scales, in fp32,
        rounded once to the query's dtype) right after the gather; a prefill with no earlier context uses
        its own K/V quantized and dequantized, exactly what a later read of the cache returns."""
        kvh, d = key_cache.shape[2], key_cache.shape[3]
        spec, dtype = _spec_of(key_cache), query.dtype
        k_scales, v_scales = kv_scales

        def gather(cache, scales, blocks):
            return dequantize_kv(cache.index_select(0, blocks), scales.index_select(0, blocks), dtype)

        for g in plan.decodes:
            sd = g.rows.shape[0]
            q = query.index_select(0, g.rows).view(sd, kvh, -1, d)
            k = gather(key_cache, k_scales, g.blocks).view(sd, -1, kvh, d).transpose(1, 2)
            v = gather(value_cache, v_scales, g.blocks).view(sd, -1, kvh, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scale)
            out.index_copy_(0, g.rows, o.reshape(sd, -1, d))
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


def _spec_of(cache: torch.Tensor):
    """The 8-bit format of a cache tensor, from its storage dtype."""
    return kv_cache_dtype({torch.int8: "int8", torch.float8_e4m3fn: "fp8_e4m3",
                           torch.float8_e5m2: "fp8_e5m2"}[cache.dtype])
