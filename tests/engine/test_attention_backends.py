"""The engine's attention backends agree with the kernels' pure-torch reference, and the engine runs end to
end on the CPU decode kernel and on the Triton kernels (under the Triton interpreter on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import LLM, SamplingParams
from engine.attention import build_attention_metadata, get_attention_backend
from engine.quantization import kv_cache_dtype
from engine.quantization.kv_cache import quantize_kv
from kernels.batch import make_paged_batch
from kernels.reference import paged_attention_ref


def stale_but_finite(batch, seed=0):
    """Unowned cache slots hold NaN in the kernels' batches; in the engine they hold stale finite values."""
    g = torch.Generator().manual_seed(seed)
    for cache in (batch.key_cache, batch.value_cache):
        nan = torch.isnan(cache)
        cache[nan] = torch.randn(int(nan.sum()), generator=g, dtype=cache.dtype)
    return batch


@pytest.mark.parametrize("q_lens, seq_lens, heads", [
    ([1, 1, 1], [1, 17, 40], (4, 2)),  # decode only, partial blocks
    ([5, 1, 16, 3], [5, 30, 16, 50], (9, 3)),  # prefill, decode, prefill, chunk after a prefix
    ([1, 7, 1], [64, 70, 3], (8, 8)),  # no GQA
    ([1] * 20 + [4], list(range(1, 200, 10)) + [9], (4, 1)),  # many decodes: split into length groups
])
@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_torch_and_cpu_backends_match_reference(q_lens, seq_lens, heads, name):
    h, kvh = heads
    b = stale_but_finite(make_paged_batch(q_lens, seq_lens, num_heads=h, num_kv_heads=kvh, head_dim=32,
                                          block_size=16, seed=3))
    backend = get_attention_backend(name)
    qlen, slen = np.array(q_lens), np.array(seq_lens)
    bt = b.block_tables.numpy()
    plan = backend.plan(qlen, slen, bt, 16, torch.device("cpu"), torch.float32)
    meta = build_attention_metadata(qlen, slen, bt, np.zeros(sum(q_lens), dtype=np.int64), torch.device("cpu"), plan)
    # the backend's fast path for whole prefills reads this step's K/V directly: hand it the cache's copy
    kvh_, d = b.key_cache.shape[2], b.key_cache.shape[3]
    new_k, new_v = [], []
    for s, (q, n) in enumerate(zip(q_lens, seq_lens)):
        pos = torch.arange(n - q, n)
        blocks = b.block_tables[s, (pos // 16)].long()
        new_k.append(b.key_cache[blocks, pos % 16])
        new_v.append(b.value_cache[blocks, pos % 16])
    out = backend.attention(b.query, torch.cat(new_k), torch.cat(new_v), b.key_cache, b.value_cache, meta, b.scale)
    torch.testing.assert_close(out, paged_attention_ref(*b.args()), atol=2e-5, rtol=1e-4)


def test_engine_on_triton_kernels_matches_hf(tiny_model_dir, hf_greedy_fn, prompts_fn):
    pytest.importorskip("triton")
    prompts = prompts_fn(3, [3, 20, 9], seed=21)
    expected = hf_greedy_fn(tiny_model_dir("qwen3"), prompts, 5)
    # a 16-token budget mixes chunked prefill with decode, so both Triton attention paths run
    llm = LLM(tiny_model_dir("qwen3"), device="cpu", attention_backend="triton", max_num_batched_tokens=16)
    assert llm.engine.runner.backend.name == "triton"
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert [o.token_ids for o in outs] == expected


@pytest.mark.parametrize("kv", ["auto", "int8", "fp8_e4m3"])
def test_engine_on_the_cpu_decode_kernel_matches_hf(tiny_model_dir, hf_greedy_fn, prompts_fn, kv):
    """The CPU default: decodes through the C kernel, in batches mixed with chunked prefills; with an 8-bit
    cache it gives the torch backend's tokens (HF's own cache is not quantized)."""
    prompts = prompts_fn(4, [3, 20, 9, 33], seed=21)
    kw = dict(device="cpu", max_num_batched_tokens=16, kv_cache_dtype=kv)
    llm = LLM(tiny_model_dir("qwen3"), **kw)
    if llm.engine.runner.backend.decode_kernel is None:
        pytest.skip("no CPU decode kernel on this machine (no C compiler)")
    assert llm.engine.runner.backend.name == "cpu"  # auto on a CPU
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    got = [o.token_ids for o in llm.generate(prompts, sp)]
    if kv == "auto":
        assert got == hf_greedy_fn(tiny_model_dir("qwen3"), prompts, 8)
    else:
        torch_llm = LLM(tiny_model_dir("qwen3"), attention_backend="torch", **kw)
        assert got == [o.token_ids for o in torch_llm.generate(prompts, sp)]


def test_the_startup_log_says_whether_the_decode_kernel_runs(tiny_model_dir, caplog):
    """float32: the kernel, by its library's name; bfloat16: the cpu backend says it decodes with torch."""
    import logging

    caplog.set_level(logging.INFO, logger="engine.worker.model_runner")
    llm = LLM(tiny_model_dir("qwen3"), device="cpu", dtype="float32")
    if llm.engine.runner.backend.decode_kernel is None:
        pytest.skip("no CPU decode kernel on this machine (no C compiler)")
    assert f"Attention backend cpu (decode kernel {llm.engine.runner.backend.decode_kernel.library.name})" in caplog.text
    caplog.clear()
    LLM(tiny_model_dir("qwen3"), device="cpu", dtype="bfloat16")
    assert "Attention backend cpu: its decode kernel takes float32, the model runs in bfloat16: decoding with torch" \
        in caplog.text
    caplog.clear()
    LLM(tiny_model_dir("qwen3"), device="cpu", attention_backend="torch")
    assert "Attention backend torch\n" in caplog.text + "\n" and "decode kernel" not in caplog.text


def test_the_cpu_backend_is_refused_off_the_cpu(tiny_model_dir, monkeypatch):
    from engine.config import EngineArgs

    monkeypatch.setattr(EngineArgs, "_resolve_device", lambda self: torch.device("cuda"))
    with pytest.raises(ValueError, match="^attention_backend: cpu"):
        EngineArgs(model=tiny_model_dir("qwen3"), attention_backend="cpu", dtype="float32").resolve()


def _decode_step(seq_lens, heads=(9, 3), seed=5):
    """A decode-only step on random paged caches; the query is a view of a wider tensor (q's heads of the
    model's rotated [T, H + KVH, D] q and k), as the model hands it."""
    h, kvh = heads
    b = stale_but_finite(make_paged_batch([1] * len(seq_lens), seq_lens, num_heads=h, num_kv_heads=kvh,
                                          head_dim=32, block_size=16, seed=seed))
    query = torch.cat([b.query, torch.randn(len(seq_lens), kvh, 32)], dim=1)[:, :h]
    return b, query


@pytest.mark.parametrize("cache_format", ["auto", "int8"])
def test_a_decode_batch_in_order_attends_without_the_row_gather_bit_for_bit(cache_format):
    """Under 16 decoding sequences form one group, sorted by context length; when that is the batch's order
    (always with one sequence) the backend skips gathering the query rows and scattering the output rows, and
    the result is the gathering path's exactly. (The order matters: SDPA's CPU kernel can round a row
    differently at another position in the batch, so the group's order is kept.)"""
    import dataclasses

    from engine.attention.plans import TorchPlan

    backend = get_attention_backend("torch")
    q_lens = np.ones(4, dtype=np.int64)
    b, _ = _decode_step([40, 17, 1, 33])
    plan = backend.plan(q_lens, b.seq_lens.numpy(), b.block_tables.numpy(), 16, torch.device("cpu"), torch.float32)
    assert plan.decodes[0].rows.tolist() == [2, 1, 3, 0]
    b, query = _decode_step([1, 17, 33, 40])
    seq_lens, bt = b.seq_lens.numpy(), b.block_tables.numpy()
    plan = backend.plan(q_lens, seq_lens, bt, 16, torch.device("cpu"), torch.float32)
    assert len(plan.decodes) == 1 and plan.decodes[0].rows is None
    gathering = TorchPlan((dataclasses.replace(plan.decodes[0], rows=torch.arange(4)),), ())
    caches, kv_scales = (b.key_cache, b.value_cache), None
    if cache_format == "int8":
        (kc, k_scale), (vc, v_scale) = (quantize_kv(c, kv_cache_dtype("int8")) for c in caches)
        caches, kv_scales = (kc, vc), (k_scale, v_scale)
    outs = []
    for p in (plan, gathering):
        meta = build_attention_metadata(q_lens, seq_lens, bt, np.zeros(4, dtype=np.int64), torch.device("cpu"), p)
        outs.append(backend.attention(query, None, None, *caches, meta, b.scale, kv_scales=kv_scales))
    assert torch.equal(outs[0], outs[1])


def test_store_kv_without_skipped_slots_writes_what_the_checked_path_writes():
    backend = get_attention_backend("torch")
    q_lens, seq_lens = np.array([1, 3]), np.array([5, 3])
    tables = np.array([[0, 1], [2, 0]], dtype=np.int32)
    slots = np.array([4, 8, 9, 10])  # 4-slot blocks: sequence 0's position 4 in block 1, sequence 1 in block 2
    k, v = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    caches = []
    for slot_mapping in (slots, np.concatenate([slots[:1], [-1], slots[2:]])):
        meta = build_attention_metadata(q_lens, seq_lens, tables, slot_mapping, torch.device("cpu"))
        assert meta.skips_slots == bool((slot_mapping < 0).any())
        kc, vc = torch.zeros(4, 4, 2, 8), torch.zeros(4, 4, 2, 8)
        backend.store_kv(k, v, kc, vc, meta)
        caches.append((kc, vc))
    (kc, vc), (kc_skip, vc_skip) = caches
    assert torch.equal(kc.view(-1, 2, 8)[torch.from_numpy(slots)], k)
    assert torch.equal(vc.view(-1, 2, 8)[torch.from_numpy(slots)], v)
    assert torch.equal(kc_skip.view(-1, 2, 8)[8], torch.zeros(2, 8))  # the skipped token's slot is untouched
    assert torch.equal(kc_skip.view(-1, 2, 8)[9], k[2]) and torch.equal(vc_skip.view(-1, 2, 8)[10], v[3])
