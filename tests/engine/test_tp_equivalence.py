"""Tensor parallelism changes nothing a user can see: TP=2, 3 and 4 give the same greedy tokens as TP=1
(and logprobs within 1e-4) on tiny random Llama, Qwen2 and Qwen3 models and on the default model, in one
run that batches, chunks prefills, preempts and hits the prefix cache.

The tiny models are shaped to cover every way a model splits: KV heads split evenly, split unevenly
(3 KV heads over 2 ranks), each replicated on 2 ranks (2 KV heads, 4 ranks), and one KV head on every rank
(MQA); a vocabulary that needs padding (512 over 3 ranks); Qwen2's q/k/v biases, Qwen3's q/k norms and
head_dim != hidden / heads, Llama's untied LM head and llama3 RoPE scaling; Mistral's sliding window (the
window's KV blocks released while requests run, on every rank alike).
"""

from __future__ import annotations

import os

import pytest
import torch

from engine import LLM, SamplingParams
from engine.executor import WorkerFailure

pytestmark = pytest.mark.slow  # each case starts worker processes (a few seconds of imports each)

MAX_NEW = 12
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=2)
# 4-token blocks, 24 of them (96 slots for 6 sequences that need up to 72 each: preemption), 16 tokens a
# step (prompts of 17, 33 and 60 tokens are chunked), prefix caching on.
ENGINE = dict(device="cpu", block_size=4, num_kv_blocks=24, max_num_batched_tokens=16, cpu_threads=1)

# name -> (transformers config overrides on top of the conftest's tiny config of that architecture)
MODELS = {
    "llama": ("llama", {}),  # 4 heads, 2 KV heads, untied head, llama3 RoPE
    "qwen2-mqa": ("qwen2", {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 1}),
    "qwen3": ("qwen3", {}),  # 6 heads, 3 KV heads, head_dim 32
    "mistral-window": ("mistral", {}),  # every layer slides over 20 keys: blocks released while generating
}
CASES = [
    ("llama", 2),       # 1 KV head per rank
    ("llama", 4),       # each KV head on 2 ranks, one query head per rank
    ("qwen2-mqa", 2),   # the one KV head on every rank
    ("qwen2-mqa", 3),   # ... and the vocabulary padded to 513
    ("qwen3", 2),       # uneven: 1 and 2 KV heads
    ("qwen3", 3),       # 1 KV head each
    ("mistral-window", 2),  # sliding windows: the same released blocks and window tables on every rank
]


@pytest.fixture(scope="module")
def tp_model_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from engine.models.tiny import tiny_config
    from tests.engine.conftest import tiny_hf_config

    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            arch, overrides = MODELS[name]
            cfg = tiny_config(arch) if arch == "mistral" else tiny_hf_config(arch)
            for k, v in overrides.items():
                setattr(cfg, k, v)
            torch.manual_seed(99)
            path = tmp_path_factory.mktemp(f"tp-{name}")
            AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(path)
            cache[name] = str(path)
        return cache[name]

    return get


def run_workload(llm: LLM, prompts: list[list[int]], shared_prefix: list[int]) -> dict:
    """One mixed batch (batching, chunked prefill, preemption), then prompts sharing a cached prefix."""
    engine = llm.engine
    preemptions = 0
    step = engine.step

    def counting_step():
        nonlocal preemptions
        out = step()
        preemptions += out.stats.num_preemptions
        return out

    engine.step = counting_step
    outs = llm.generate(prompts, GREEDY)
    llm.generate([shared_prefix + [7]], GREEDY)  # fills the prefix cache
    outs += llm.generate([shared_prefix + [9, 10], shared_prefix + [11]], GREEDY)
    assert all(o.finish_reason == "length" for o in outs)
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks  # everything freed
    return {"tokens": [o.token_ids for o in outs], "cached": [o.num_cached_tokens for o in outs],
            "logprobs": [o.outputs[0].logprobs for o in outs], "preemptions": preemptions}


def assert_same(got: dict, want: dict) -> None:
    assert got["tokens"] == want["tokens"]
    assert got["cached"] == want["cached"] and sum(got["cached"]) > 0  # the prefix cache was hit
    assert got["preemptions"] == want["preemptions"] > 0
    for lps, ref in zip(got["logprobs"], want["logprobs"]):
        for a, b in zip(lps, ref, strict=True):
            assert a.token_id == b.token_id and abs(a.logprob - b.logprob) < 1e-4
            assert a.top.keys() == b.top.keys()
            assert all(abs(a.top[t] - b.top[t]) < 1e-4 for t in a.top)


@pytest.fixture(scope="module")
def reference(tp_model_dir, prompts_fn):
    """TP=1 results per model (in-process, cheap)."""
    cache: dict[str, dict] = {}

    def get(name: str, prompts, prefix) -> dict:
        if name not in cache:
            cache[name] = run_workload(LLM(tp_model_dir(name), **ENGINE), prompts, prefix)
        return cache[name]

    return get


@pytest.mark.parametrize("name,tp", CASES, ids=[f"{n}-tp{t}" for n, t in CASES])
def test_tensor_parallel_greedy_output_matches_one_rank(name, tp, tp_model_dir, reference, prompts_fn):
    prompts = prompts_fn(6, [1, 5, 16, 17, 33, 60])
    prefix = prompts_fn(1, [40], seed=7)[0]
    want = reference(name, prompts, prefix)
    llm = LLM(tp_model_dir(name), tensor_parallel_size=tp, **ENGINE)
    pids = llm.engine.executor.worker_pids
    try:
        assert len(pids) == tp - 1
        assert_same(run_workload(llm, prompts, prefix), want)
    finally:
        llm.shutdown()
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)  # stopped and reaped
    llm.shutdown()  # idempotent
    with pytest.raises(WorkerFailure, match="shut down"):
        llm.generate([[5, 6, 7]], GREEDY)


def test_the_default_model_at_two_ranks_matches_one_rank(prompts_fn):
    # SmolLM2-135M: 9 query heads, 3 KV heads: ranks hold 1 and 2 KV heads (whole groups).
    engine = dict(ENGINE, block_size=4, num_kv_blocks=40, max_num_batched_tokens=24)
    prompts = prompts_fn(6, [1, 5, 16, 17, 33, 60], vocab=49152)
    prefix = prompts_fn(1, [40], vocab=49152, seed=7)[0]
    want = run_workload(LLM(**engine), prompts, prefix)
    llm = LLM(tensor_parallel_size=2, **engine)
    try:
        assert llm.engine.runner.tp.shard.num_kv_heads == 1  # rank 0 holds 1 of the 3 KV heads, rank 1 the other 2
        assert_same(run_workload(llm, prompts, prefix), want)
    finally:
        llm.shutdown()
