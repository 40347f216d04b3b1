"""The engine's attention backends with sliding windows and soft-capping: the torch and cpu backends agree with the
kernels' reference on batches whose released pages are NaN (so it must not gather them), and a hybrid
soft-capped model (tiny Gemma 2) runs end to end on the Triton kernels (interpreter) token for token like HF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import LLM, SamplingParams
from engine.attention import build_attention_metadata, get_attention_backend
from kernels.batch import make_paged_batch
from kernels.reference import paged_attention_ref


def unowned_to_finite(batch, seed=0):
    """NaN where the torch backend may legitimately read stale values (the unowned tail of a sequence's last
    page, which it gathers whole and masks); released pages stay NaN: reading one would poison the output."""
    g = torch.Generator().manual_seed(seed)
    bs = batch.key_cache.shape[1]
    for s, (q, n) in enumerate(zip(batch.q_lens, batch.context_lens)):
        if n % bs:
            last = int(batch.block_tables[s, (n - 1) // bs])
            for cache in (batch.key_cache, batch.value_cache):
                tail = cache[last, n % bs:]
                cache[last, n % bs:] = torch.randn(tail.shape, generator=g, dtype=cache.dtype)
    return batch


@pytest.mark.parametrize("window", [None, 1, 9, 16, 33])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_torch_and_cpu_backends_match_reference_with_window_and_softcap(window, softcap, name):
    q_lens, seq_lens = [1, 1, 12, 40, 3, 1], [70, 5, 12, 40, 50, 33]
    b = unowned_to_finite(make_paged_batch(q_lens, seq_lens, num_heads=4, num_kv_heads=2, head_dim=32,
                                           block_size=8, seed=5, sliding_window=window))
    backend = get_attention_backend(name)
    qlen, slen, bt = np.array(q_lens), np.array(seq_lens), b.block_tables.numpy()
    plan = backend.plan(qlen, slen, bt, 8, torch.device("cpu"), torch.float32, sliding_window=window)
    meta = build_attention_metadata(qlen, slen, bt, np.zeros(sum(q_lens), dtype=np.int64), torch.device("cpu"),
                                    plan, sliding_window=window)
    new_k, new_v = [], []  # this step's K/V, which the whole-prefill path reads directly
    for s, (q, n) in enumerate(zip(q_lens, seq_lens)):
        pos = torch.arange(n - q, n)
        blocks = b.block_tables[s, pos // 8].long()
        new_k.append(b.key_cache[blocks, pos % 8])
        new_v.append(b.value_cache[blocks, pos % 8])
    out = backend.attention(b.query, torch.cat(new_k), torch.cat(new_v), b.key_cache, b.value_cache, meta, b.scale,
                            logit_softcap=softcap)
    assert not out.isnan().any()
    expected = paged_attention_ref(*b.args(), sliding_window=window, softcap=softcap)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_hybrid_softcapped_model_on_triton_kernels_matches_hf(tmp_path, hf_greedy_fn, prompts_fn):
    pytest.importorskip("triton")
    from engine.models.tiny import save_tiny_model

    model = str(save_tiny_model(tmp_path / "gemma2", "gemma2", seed=1234))
    prompts = prompts_fn(2, [3, 21], seed=21)  # the second runs past the 16-key window
    expected = hf_greedy_fn(model, prompts, 6)
    # a 16-token budget mixes chunked prefill with decode, so both Triton attention paths run, in 3 KV groups
    llm = LLM(model, device="cpu", attention_backend="triton", max_num_batched_tokens=16, block_size=8)
    assert llm.engine.runner.backend.name == "triton" and len(llm.engine.kv.windows) == 3
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert [o.token_ids for o in outs] == expected


def test_hybrid_softcapped_model_on_the_cpu_decode_kernel_matches_hf(tmp_path, hf_greedy_fn, prompts_fn):
    """Gemma 2's local (16-key window) and global layers, soft-capped, decoded by the C kernel."""
    from engine.models.tiny import save_tiny_model

    model = str(save_tiny_model(tmp_path / "gemma2", "gemma2", seed=1234))
    prompts = prompts_fn(3, [3, 21, 40], seed=21)  # the longer ones decode past the window
    expected = hf_greedy_fn(model, prompts, 8)
    llm = LLM(model, device="cpu", attention_backend="cpu", max_num_batched_tokens=16, block_size=8)
    if llm.engine.runner.backend.decode_kernel is None:
        pytest.skip("no CPU decode kernel on this machine (no C compiler)")
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert [o.token_ids for o in outs] == expected
