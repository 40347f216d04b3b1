"""Every newer family (MoE, sliding-window, Gemma, Phi-3) generates greedily token for token what HF transformers
generates (fp32, CPU) on the same random tiny model (`engine.models.tiny`), batched, under chunked prefill, under
preemption and with prefix-cache hits; sliding-window models also run far past their window on a KV pool smaller
than one sequence, with the blocks each step holds checked against the window arithmetic.

Each tiny config exercises what sets its family apart (windows of 12-28 keys, experts with top-k routing, strong
soft-caps, two RoPE bases, LongRoPE); tests/engine/test_model_features.py checks that each of those matters.
"""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.config import EngineArgs
from engine.core.kv_cache_manager import KVCacheManager, cdiv
from engine.core.kv_groups import first_needed_block

ARCHS = ["mistral", "mixtral", "qwen3_moe", "olmoe", "gemma2", "gemma3", "phi3"]
WINDOWED = ["mistral", "gemma2", "gemma3", "phi3"]
LENGTHS = [1, 5, 16, 17, 33, 60]
MAX_NEW = 12
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models gain nothing from threads (tests/conftest.py)."""


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    from engine.models.tiny import save_tiny_model

    cache: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in cache:
            cache[arch] = str(save_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch, seed=1234))
        return cache[arch]

    return get


@pytest.fixture(scope="module")
def reference(family_dir, hf_greedy_fn):
    cache = {}

    def get(arch: str, prompts: list[list[int]], max_new: int = MAX_NEW):
        key = (arch, tuple(map(tuple, prompts)), max_new)
        if key not in cache:
            cache[key] = hf_greedy_fn(family_dir(arch), prompts, max_new)
        return cache[key]

    return get


def greedy(llm: LLM, prompts, max_new: int = MAX_NEW) -> list[list[int]]:
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True))
    assert all(o.finish_reason == "length" for o in outs)
    return [o.token_ids for o in outs]


def count_steps(engine, record):
    """Wrap engine.step to hand each step's stats to `record`."""
    original = engine.step

    def step():
        out = original()
        record(out.stats)
        return out

    engine.step = step


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_greedy_matches_hf(arch, family_dir, reference, prompts_fn):
    prompts = prompts_fn(6, LENGTHS)
    llm = LLM(family_dir(arch), device="cpu")
    assert greedy(llm, prompts) == reference(arch, prompts)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_matches_hf(arch, family_dir, reference, prompts_fn):
    prompts = prompts_fn(6, LENGTHS)
    # A 7-token budget splits every prompt longer than 7 into chunks and mixes chunks with decodes.
    llm = LLM(family_dir(arch), device="cpu", max_num_batched_tokens=7)
    assert greedy(llm, prompts) == reference(arch, prompts)


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption_matches_hf(arch, family_dir, reference, prompts_fn):
    prompts = prompts_fn(6, LENGTHS)
    windows = EngineArgs(model=family_dir(arch), device="cpu").resolve().model.group_windows
    # what the longest request holds at most, in every KV-cache group
    one = KVCacheManager(1, 4, windows=windows, max_chunk_tokens=64).num_blocks_for(60 + MAX_NEW)
    # Room for the longest request and a little more: six together do not fit, so requests are preempted.
    llm = LLM(family_dir(arch), device="cpu", block_size=4, num_kv_blocks=one + 4, max_num_batched_tokens=64)
    preemptions = []
    count_steps(llm.engine, lambda stats: preemptions.append(stats.num_preemptions))
    assert greedy(llm, prompts) == reference(arch, prompts)
    assert sum(preemptions) > 0
    assert llm.engine.kv.pool.num_free_blocks == llm.engine.kv.pool.num_blocks


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_cache_hits_match_hf(arch, family_dir, reference, prompts_fn):
    shared = prompts_fn(1, [40], seed=7)[0]
    tails = prompts_fn(4, [1, 3, 9, 20], seed=8)
    prompts = [shared + t for t in tails] + [shared[:32], shared]
    expected = reference(arch, prompts)
    llm = LLM(family_dir(arch), device="cpu", block_size=16)
    first = greedy(llm, prompts[:1])  # fills the cache with the shared prefix
    rest = llm.generate(prompts[1:], GREEDY)
    assert first + [o.token_ids for o in rest] == expected
    # the 2 full shared blocks are reused (the bare 32-token prefix only 1: one token is always computed)
    assert [o.num_cached_tokens for o in rest] == [32, 32, 32, 16, 32]


@pytest.mark.parametrize("arch", WINDOWED)
def test_generation_far_past_the_window_releases_blocks_and_matches_hf(arch, family_dir, reference, prompts_fn):
    """One sequence of 10 + 110 tokens on a pool that holds fewer tokens than that in its full groups alone
    would need, if the window groups kept everything: each step holds exactly the full groups' blocks plus each
    window group's live blocks (those from the oldest key the next token reads)."""
    prompt = prompts_fn(1, [10], seed=3)[0]
    budget, bs, new = 16, 4, 110
    llm = LLM(family_dir(arch), device="cpu", block_size=bs, max_num_batched_tokens=budget, num_kv_blocks=1024)
    engine = llm.engine
    windows = engine.kv.windows
    assert any(w is not None for w in windows)
    held = []
    count_steps(engine, lambda stats: held.append(stats.kv_blocks_used))
    assert greedy(llm, [prompt], new) == reference(arch, [prompt], new)
    # after the step that computed up to position c - 1 (c = 10, 11, ..., 118; the prefill is one step, and
    # the last step, which computes position 118, finishes the request and frees everything),
    # the request holds every full group's blocks of c tokens, and in a window group the blocks from the one
    # holding key (c - 1) - window + 1, the oldest its last query read
    expected = []
    for c in [10] + list(range(11, 9 + new)):
        expected.append(sum(cdiv(c, bs) - first_needed_block(c - 1, w, bs) for w in windows))
    assert held == expected + [0]
    unwindowed = len(windows) * cdiv(10 + new - 1, bs)
    assert max(held) < unwindowed
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks


@pytest.mark.parametrize("arch", ["mistral", "phi3"])
def test_window_model_runs_on_a_pool_smaller_than_one_sequence(arch, family_dir, reference, prompts_fn):
    """Every layer slides: 3 sequences of 100+ tokens each on 12 blocks of 4 (48 slots)."""
    prompts = prompts_fn(3, [5, 9, 13], seed=11)
    llm = LLM(family_dir(arch), device="cpu", block_size=4, num_kv_blocks=12, max_num_batched_tokens=8)
    windows = llm.engine.kv.windows
    assert len(windows) == 1 and windows[0] is not None
    assert llm.engine.kv.num_blocks_for(113) <= 12 < cdiv(113, 4)
    assert greedy(llm, prompts, 100) == reference(arch, prompts, 100)


def test_phi3_longrope_switches_to_long_factors_like_hf(family_dir, hf_greedy_fn, prompts_fn):
    """LongRoPE at a 40-token original context with partial rotary: prompts past 40 tokens use the long factors
    from the start; prompts that stay under 40 keep the short ones (see engine/models/phi3.py for crossings)."""
    prompts = prompts_fn(4, [5, 20, 45, 61], seed=5)
    expected = hf_greedy_fn(family_dir("phi3_longrope"), prompts, 12)
    llm = LLM(family_dir("phi3_longrope"), device="cpu")
    assert greedy(llm, prompts) == expected
    assert greedy(llm, prompts[2:3]) == expected[2:3]  # alone
