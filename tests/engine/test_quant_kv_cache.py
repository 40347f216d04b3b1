"""The 8-bit KV cache: quantize/dequantize arithmetic, the torch backend against the reference over the
dequantized cache, bytes per token and block counts, and the engine features (prefix caching, preemption,
chunked prefill) giving the same tokens with an int8 cache as without those features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import LLM, SamplingParams
from engine.attention import build_attention_metadata, get_attention_backend
from engine.quantization import kv_cache_dtype
from engine.quantization.kv_cache import allocate_kv_cache, dequantize_kv, fake_quantize_kv, quantize_kv
from kernels.reference import paged_attention_ref
from tests.engine.helpers_core import count_preemptions

FORMATS = ["int8", "fp8_e4m3", "fp8_e5m2"]
# worst relative error of one element against its row's largest magnitude: half a step (int8), half an
# ulp at the top binade (fp8: 3 and 2 mantissa bits)
ROW_RELATIVE_ERROR = {"int8": 0.5 / 127, "fp8_e4m3": 2 ** -4, "fp8_e5m2": 2 ** -3}


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_error_is_bounded_per_token_and_head(name):
    spec = kv_cache_dtype(name)
    x = torch.randn(7, 3, 64) * torch.logspace(-3, 3, 7)[:, None, None]  # tokens of very different magnitude
    q, scale = quantize_kv(x, spec)
    assert q.dtype == spec.storage and scale.shape == (7, 3) and scale.dtype == torch.float32
    err = (dequantize_kv(q, scale, torch.float32) - x).abs() / x.abs().amax(-1, keepdim=True)
    assert float(err.max()) <= ROW_RELATIVE_ERROR[name] * 1.001


@pytest.mark.parametrize("name, expected", [("auto", 2 * 30 * 3 * 64 * 4), ("int8", 2 * 30 * 3 * (64 + 4)),
                                            ("fp8_e4m3", 2 * 30 * 3 * (64 + 4))])
def test_bytes_per_token_counts_codes_and_scales(name, expected):
    # SmolLM2-135M's shape: 30 layers, 3 KV heads, head_dim 64, fp32
    assert kv_cache_dtype(name).bytes_per_token(30, 3, 64, torch.float32) == expected


def _random_step(num_blocks=12, block_size=4, kvh=2, heads=4, d=16, seed=0):
    """A mixed step: a decode (context 9), a chunked prefill (3 new after 5), a fresh prefill of 6."""
    g = torch.Generator().manual_seed(seed)
    query_lens, seq_lens = np.array([1, 3, 6]), np.array([9, 8, 6])
    tables = np.array([[3, 7, 1, 0], [2, 5, 0, 0], [8, 9, 0, 0]], dtype=np.int32)
    starts = seq_lens - query_lens
    slots = np.concatenate([tables[s, p // block_size] * block_size + p % block_size
                            for s in range(3) for p in [np.arange(starts[s], seq_lens[s])]])
    t = int(query_lens.sum())
    return (query_lens, seq_lens, tables, slots, torch.randn(t, heads, d, generator=g),
            torch.randn(t, kvh, d, generator=g), torch.randn(t, kvh, d, generator=g),
            torch.randn(num_blocks, block_size, kvh, d, generator=g), torch.randn(num_blocks, block_size, kvh, d, generator=g))


@pytest.mark.parametrize("name", FORMATS)
def test_torch_backend_attends_over_exactly_the_dequantized_cache(name):
    spec = kv_cache_dtype(name)
    query_lens, seq_lens, tables, slots, q, k, v, old_k, old_v = _random_step()
    kc, vc, ks, vs = allocate_kv_cache(12, 4, 2, 16, spec, torch.float32, torch.device("cpu"))
    # earlier context: quantized as the store would have written it
    for cache, scales, old in ((kc, ks, old_k), (vc, vs, old_v)):
        codes, s = quantize_kv(old, spec)
        cache.view(torch.uint8).copy_(codes.view(torch.uint8)) if spec.is_float8 else cache.copy_(codes)
        scales.copy_(s)
    backend = get_attention_backend("torch")
    plan = backend.plan(query_lens, seq_lens, tables, 4, torch.device("cpu"), torch.float32)
    meta = build_attention_metadata(query_lens, seq_lens, tables, slots, torch.device("cpu"), plan)
    backend.store_kv(k, v, kc, vc, meta, kv_scales=(ks, vs))
    out = backend.attention(q, k, v, kc, vc, meta, 0.25, kv_scales=(ks, vs))

    k_deq, v_deq = dequantize_kv(kc, ks, torch.float32), dequantize_kv(vc, vs, torch.float32)
    torch.testing.assert_close(k_deq.view(-1, 2, 16)[torch.from_numpy(slots)], fake_quantize_kv(k, spec))
    expected = paged_attention_ref(q, k_deq, v_deq, torch.from_numpy(tables), meta.cu_seqlens_q, meta.seq_lens, 0.25)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_an_int8_cache_holds_3_2_times_the_tokens_of_fp32_at_head_dim_16(tiny_model_dir):
    base = LLM(tiny_model_dir("llama"), device="cpu", cpu_kv_cache_gb=0.01)
    int8 = LLM(tiny_model_dir("llama"), device="cpu", cpu_kv_cache_gb=0.01, kv_cache_dtype="int8")
    # tiny model, K and V x 2 layers x 2 KV heads x head_dim 16: fp32 2 x 2 x 2 x 16 x 4 = 512 B/token,
    # int8 2 x 2 x 2 x (16 + 4) = 160 (the scale is a large share at this small head_dim; 6% at 64)
    assert base.engine.runner.config.model.kv_bytes_per_token == 512
    assert int8.engine.runner.config.model.kv_bytes_per_token == 160
    assert int8.engine.runner.num_kv_blocks == int(0.01 * 2**30) // (16 * 160)
    assert int8.engine.runner.kv_caches[0][0].dtype == torch.int8


def _greedy(llm, prompts, max_tokens=12):
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, sp)]


@pytest.fixture(scope="module")
def int8_reference(tiny_model_dir, prompts_fn):
    prompts = prompts_fn(6, [5, 13, 21, 34], seed=11)
    llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", enable_prefix_caching=False)
    return prompts, _greedy(llm, prompts)


def test_chunked_prefill_gives_the_same_tokens_with_an_int8_cache(tiny_model_dir, int8_reference):
    prompts, expected = int8_reference
    llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", max_num_batched_tokens=7)
    assert _greedy(llm, prompts) == expected


def test_preemption_gives_the_same_tokens_with_an_int8_cache(tiny_model_dir, int8_reference):
    prompts, expected = int8_reference
    # 20 blocks of 4 tokens for 6 sequences of up to 46 tokens: requests are preempted and recomputed
    llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", block_size=4, num_kv_blocks=20)
    engine = llm.engine
    preemptions = count_preemptions(engine)
    assert _greedy(llm, prompts) == expected
    assert sum(preemptions) > 0
    assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks


def test_prefix_cache_hits_give_the_same_tokens_with_an_int8_cache(tiny_model_dir, prompts_fn):
    shared = prompts_fn(1, [32], seed=5)[0]
    prompts = [shared + tail for tail in prompts_fn(3, [3, 6, 9], seed=6)]
    solo = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", enable_prefix_caching=False)
    expected = _greedy(solo, prompts)
    llm = LLM(tiny_model_dir("llama"), device="cpu", kv_cache_dtype="int8", block_size=16)
    first = _greedy(llm, prompts[:1])
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    rest = llm.generate(prompts[1:], sp)  # their 32-token shared prefix (2 blocks) comes from the cache
    assert [o.num_cached_tokens for o in rest] == [32, 32]
    assert first + [o.outputs[0].token_ids for o in rest] == expected


@pytest.mark.parametrize("arch", ["gemma2", "mixtral", "phi3"])
def test_families_the_8bit_cache_does_not_cover_are_refused_naming_kv_cache_dtype(arch, tmp_path):
    # Gemma soft-caps and slides its windows, Phi-3 slides, Mixtral's attention does not pass the scales on:
    # each would silently attend over codes without their scales, so the engine refuses before loading
    from engine.config import EngineArgs
    from engine.models.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / arch, arch)
    with pytest.raises(ValueError, match="kv_cache_dtype: an 8-bit KV cache is supported for llama"):
        EngineArgs(model=str(path), device="cpu", kv_cache_dtype="int8").resolve()
    assert EngineArgs(model=str(path), device="cpu").resolve().model.kv_cache.quantized is False
