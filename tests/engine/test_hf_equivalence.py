"""Greedy output is token-for-token identical to HF transformers (fp32, CPU) on the same weights,
whatever the batching: several prompts together, chunked prefill, preemption, prefix-cache hits."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams


ARCHS = ["llama", "qwen2", "qwen3"]
LENGTHS = [1, 5, 16, 17, 33, 60]
MAX_NEW = 12
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


def engine_greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    outs = llm.generate(prompts, GREEDY)
    assert all(o.finish_reason == "length" for o in outs)
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, hf_greedy_fn):
    cache = {}

    def get(arch: str, prompts_key: str, prompts: list[list[int]]):
        if (arch, prompts_key) not in cache:
            cache[(arch, prompts_key)] = hf_greedy_fn(tiny_model_dir(arch), prompts, MAX_NEW)
        return cache[(arch, prompts_key)]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_greedy_matches_hf(arch, tiny_model_dir, reference, prompts_fn):
    prompts = prompts_fn(6, LENGTHS)
    llm = LLM(tiny_model_dir(arch), device="cpu")
    assert engine_greedy(llm, prompts) == reference(arch, "mixed", prompts)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_matches_hf(arch, tiny_model_dir, reference, prompts_fn):
    prompts = prompts_fn(6, LENGTHS)
    # A 7-token budget splits every prompt longer than 7 into chunks and mixes chunks with decodes.
    llm = LLM(tiny_model_dir(arch), device="cpu", max_num_batched_tokens=7)
    assert engine_greedy(llm, prompts) == reference(arch, "mixed", prompts)


@pytest.mark.parametrize("arch", ARCHS)
def test_preemption_matches_hf(arch, tiny_model_dir, reference, prompts_fn):
    prompts = prompts_fn(6, LENGTHS)
    # 12 blocks of 4 tokens = 48 slots for 6 sequences that need up to 72 tokens each: requests are
    # preempted and recomputed repeatedly.
    llm = LLM(tiny_model_dir(arch), device="cpu", block_size=4, num_kv_blocks=20)
    preemptions = 0
    engine = llm.engine
    original_step = engine.step

    def counting_step():
        nonlocal preemptions
        out = original_step()
        preemptions += out.stats.num_preemptions
        return out

    engine.step = counting_step
    assert engine_greedy(llm, prompts) == reference(arch, "mixed", prompts)
    assert preemptions > 0
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_cache_hits_match_hf(arch, tiny_model_dir, hf_greedy_fn, prompts_fn):
    shared = prompts_fn(1, [40], seed=7)[0]
    tails = prompts_fn(4, [1, 3, 9, 20], seed=8)
    prompts = [shared + t for t in tails] + [shared[:32], shared]
    expected = hf_greedy_fn(tiny_model_dir(arch), prompts, MAX_NEW)
    llm = LLM(tiny_model_dir(arch), device="cpu", block_size=16)
    first = engine_greedy(llm, prompts[:1])  # fills the cache with the shared prefix
    rest = llm.generate(prompts[1:], GREEDY)
    assert first + [o.token_ids for o in rest] == expected
    # every later prompt reuses the 2 full shared blocks (the bare 32-token prefix only 1: one token must
    # always be computed)
    assert [o.num_cached_tokens for o in rest] == [32, 32, 32, 16, 32]


def test_default_model_matches_hf(hf_greedy_fn):
    llm = LLM(device="cpu")
    tok = llm.tokenizer
    texts = ["The capital of France is", "def fibonacci(n):",
             "Here is a short story about a robot who learns to paint. Once upon a time,", "1, 2, 3,"]
    prompts = [tok.encode(t) for t in texts]
    from engine.models.resolve import resolve_model

    expected = hf_greedy_fn(str(resolve_model(None).path), prompts, 16, stop_at_eos=True)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16))
    assert [o.token_ids for o in outs] == expected
