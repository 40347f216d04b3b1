"""The 8-bit KV cache on the Triton attention backend (the interpreter on the CPU): the same greedy tokens as
the torch backend's 8-bit cache on a tiny Llama, the same block count, and prefix caching, chunked prefill and
preemption each giving the same tokens as a run without them. The kernels' codes are the torch path's bit for
bit (tests/kernels/test_kv_quant.py), so the two backends differ only in the order of fp32 sums."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.engine.helpers_core import count_preemptions

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # the interpreter runs every kernel launch in Python: ~30 s a test here


def _greedy(llm, prompts, max_tokens=8):
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, sp)]


@pytest.fixture(scope="module")
def prompts(prompts_fn):
    return prompts_fn(3, [5, 21, 34], seed=11)


@pytest.mark.parametrize("kv", ["int8", "fp8_e4m3"])
def test_triton_backend_gives_the_torch_backends_tokens_with_an_8bit_cache(kv, tiny_model_dir, prompts):
    torch_llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype=kv, enable_prefix_caching=False)
    triton_llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype=kv, attention_backend="triton",
                     enable_prefix_caching=False, max_num_batched_tokens=32)
    assert triton_llm.engine.runner.backend.name == "triton"
    assert triton_llm.engine.runner.num_kv_blocks == torch_llm.engine.runner.num_kv_blocks
    assert triton_llm.engine.runner.kv_caches[0][0].dtype == torch_llm.engine.runner.kv_caches[0][0].dtype
    assert _greedy(triton_llm, prompts) == _greedy(torch_llm, prompts)


@pytest.fixture(scope="module")
def triton_int8_reference(tiny_model_dir, prompts):
    llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", attention_backend="triton",
              enable_prefix_caching=False)
    return _greedy(llm, prompts)


def test_chunked_prefill_on_triton_with_an_int8_cache(tiny_model_dir, prompts, triton_int8_reference):
    llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", attention_backend="triton",
              max_num_batched_tokens=7)
    assert _greedy(llm, prompts) == triton_int8_reference


def test_preemption_on_triton_with_an_int8_cache(tiny_model_dir, prompts_fn):
    # tests/engine/test_quant_kv_cache.py's preemption workload: 20 blocks of 4 tokens for 6 sequences of up
    # to 46 tokens, so requests are preempted and recomputed; the reference is the torch backend's 8-bit
    # cache without preemption (the same tokens as Triton's, first test above)
    prompts = prompts_fn(6, [5, 13, 21, 34], seed=11)
    expected = _greedy(LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", enable_prefix_caching=False),
                       prompts, max_tokens=12)
    llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", attention_backend="triton",
              block_size=4, num_kv_blocks=20)
    engine = llm.engine
    preemptions = count_preemptions(engine)
    assert _greedy(llm, prompts, max_tokens=12) == expected
    assert sum(preemptions) > 0
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks


def test_prefix_cache_hits_on_triton_with_an_int8_cache(tiny_model_dir, prompts_fn):
    shared = prompts_fn(1, [32], seed=5)[0]
    prompts = [shared + tail for tail in prompts_fn(2, [3, 9], seed=6)]
    kw = dict(device="cpu", kv_cache_dtype="int8", attention_backend="triton", block_size=16)
    expected = _greedy(LLM(tiny_model_dir("llama"), enable_prefix_caching=False, **kw), prompts)
    llm = LLM(tiny_model_dir("llama"), **kw)
    first = _greedy(llm, prompts[:1])
    rest = llm.generate(prompts[1:], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert [o.num_cached_tokens for o in rest] == [32]
    assert first + [o.outputs[0].token_ids for o in rest] == expected
    assert llm.engine.runner.kv_caches[0][2].dtype == torch.float32  # the scales beside the codes
