"""The cost of a scheduled step: `SchedulerOutput` -> `roofline.StepCost` (model FLOPs and bytes, by phase).

The engine calls `scheduled_cost` for every step it runs and puts the result in `IterationStats.cost`; the
server exports it (server/stat_logger.py) and `kvserve bench` summarizes it. The formulas are those of
`engine.roofline`, the same ones `kvserve plan` prints.

A sequence's share counts as a decode when it computes one token after its prompt (the scheduler's own rule
for "not prompt work"): a `NewSeq` with start >= its prompt length, or a `CachedSeq` that carries the token
sampled for it in the previous step. Everything else (a prompt, a chunk of one, a recompute after
preemption) is prefill.
"""

from __future__ import annotations

import dataclasses

from .config import ModelConfig
from .roofline import ModelCost, Share, StepCost, step_cost
from .step import NewSeq, ScheduledSeq, SchedulerOutput


def model_cost(mc: ModelConfig) -> ModelCost:
    """The model as the formulas see it, at the dtype it runs in (weights and KV cache share it here)."""
    elem = mc.dtype.itemsize
    cost = ModelCost.from_hf_config(mc.hf_config, weight_bytes_per_param=elem, kv_bytes_per_element=elem,
                                    windows=mc.layer_windows or (None,) * mc.num_layers)
    # every layer's K and V of a token; an 8-bit cache's 1-byte codes plus a 4-byte scale per KV head
    per_token = mc.kv_cache.bytes_per_token(mc.num_layers, mc.num_kv_heads, mc.head_dim, mc.dtype)
    return dataclasses.replace(cost, kv_bytes_per_token=per_token)


def is_decode(seq: ScheduledSeq) -> bool:
    if seq.num_new != 1:
        return False
    if isinstance(seq, NewSeq):
        return seq.start >= seq.num_prompt_tokens
    return bool(seq.new_token_ids)


def scheduled_cost(model: ModelCost, sched: SchedulerOutput) -> StepCost:
    return step_cost(model, (Share(s.start, s.num_new, s.sample, is_decode(s)) for s in sched.seqs))
