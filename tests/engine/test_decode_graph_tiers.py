"""CUDA-graph decode: which split-KV count a replay uses. Graphs are captured for a few split counts per
batch size, and a replay takes the largest captured count not above what the kernel planner wants for the
batch's actual longest context, so a short context is no longer run with the splits of max_model_len.
(The graphs themselves need CUDA: tests/engine/test_gpu_engine.py compares them with eager decode.)"""

from __future__ import annotations

import pytest
import torch

from engine.worker.cuda_graphs import capture_sizes, pick_tier, split_tiers
from kernels import decode_num_splits

LLAMA_8B = dict(num_heads=32, num_kv_heads=8, head_dim=128, dtype=torch.bfloat16)


def splits(batch: int, context: int) -> int:
    return decode_num_splits(batch, max_seq_len=context, **LLAMA_8B)


def test_tiers_are_the_powers_of_two_up_to_the_count_at_max_model_len():
    assert split_tiers(1) == [1]
    assert split_tiers(3) == [1, 2, 3]
    assert split_tiers(8) == [1, 2, 4, 8]
    assert split_tiers(33) == [1, 2, 4, 8, 16, 32, 33]


def test_a_replay_takes_the_largest_tier_not_above_what_the_planner_wants():
    tiers = [1, 2, 4, 8, 16, 32, 33]
    assert [pick_tier(tiers, w) for w in (0, 1, 3, 20, 32, 33, 64)] == [1, 1, 2, 16, 32, 33, 33]


@pytest.mark.parametrize("batch", capture_sizes(256))
def test_graph_split_counts_follow_the_context_length(batch):
    """Llama-3.1-8B shape, max_model_len 131072: at every context the replay's count is within a factor of
    two below the planner's own choice for that context (never above it)."""
    tiers = split_tiers(splits(batch, 131072))
    for context in (1, 100, 768, 2048, 8192, 32768, 131072):
        wanted, used = splits(batch, context), pick_tier(tiers, splits(batch, context))
        assert wanted / 2 < used <= wanted, (context, wanted, used)


def test_a_short_context_at_batch_one_no_longer_runs_the_splits_of_max_model_len():
    """Defect 5 of issue 9: one graph per batch size captured at max_model_len ran a 768-token decode at
    batch 1 with 33 splits of at most one 64-key tile each, and a 33-way reduce."""
    assert splits(1, 131072) == 33
    assert pick_tier(split_tiers(33), splits(1, 768)) == 2
