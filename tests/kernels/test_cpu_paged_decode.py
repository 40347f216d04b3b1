"""The CPU decode kernel (kernels/cpu/paged_decode.c) reads the paged cache in place and matches the reference.

Batches come from kernels.batch: pages in random order, every slot no sequence owns NaN, table entries past
a sequence's pages (and pages a sliding window released) pointing at a NaN block, so a read of anything the
kernel should not touch shows up as NaN. Only decode rows (one query token per sequence) are the kernel's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.batch import make_paged_batch
from kernels.cpu import CpuKernelUnavailable, DecodeBatch, build_library, load_paged_decode
from kernels.cpu.paged_decode import SOURCE
from kernels.reference import paged_attention_ref, quantize_kv_ref

SHAPES = [dict(num_heads=9, num_kv_heads=3, head_dim=64, block_size=16),  # the default model's
          dict(num_heads=8, num_kv_heads=2, head_dim=80, block_size=32),
          dict(num_heads=4, num_kv_heads=4, head_dim=128, block_size=8),
          dict(num_heads=8, num_kv_heads=1, head_dim=36, block_size=1),
          dict(num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)]  # the 8B shape
SEQ_LENS = [45, 130, 1, 64, 17, 200, 16]


@pytest.fixture(scope="module")
def kernel():
    try:
        return load_paged_decode()
    except CpuKernelUnavailable as e:  # .ci/run installs gcc; a machine without a compiler runs the torch path
        pytest.skip(f"no CPU kernel on this machine: {e}")


def decode(kernel, batch, *, rows=None, num_rows=None, softcap=None, caches=None, threads=None):
    kc, vc, ks, vs = caches or (batch.key_cache, batch.value_cache, None, None)
    query = batch.query if num_rows is None else torch.randn(num_rows, *batch.query.shape[1:])
    if rows is not None:
        query[rows] = batch.query
    db = DecodeBatch.build(batch.block_tables.numpy(), batch.seq_lens.numpy(), rows, num_query_rows=len(query),
                           sliding_window=batch.sliding_window)
    out = torch.full_like(query, float("nan"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        kernel(query, kc, vc, db, batch.scale, out, softcap=softcap, k_scales=ks, v_scales=vs)
    finally:
        torch.set_num_threads(before)
    return out if rows is None else out[rows], out


def reference(batch, softcap=None, caches=None):
    kc, vc, ks, vs = caches or (batch.key_cache, batch.value_cache, None, None)
    return paged_attention_ref(batch.query, kc, vc, batch.block_tables, batch.cu_seqlens_q, batch.seq_lens,
                               batch.scale, sliding_window=batch.sliding_window, softcap=softcap,
                               k_scales=ks, v_scales=vs)


def close(out, ref):
    assert not out.isnan().any(), f"{int(out.isnan().sum())} NaN outputs: a stale or unowned slot was read"
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{num_heads}kv{num_kv_heads}d{head_dim}b{block_size}".format(**s))
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_matches_the_reference_for_every_shape(kernel, shape, threads):
    batch = make_paged_batch([1] * len(SEQ_LENS), SEQ_LENS, seed=3, **shape)
    close(decode(kernel, batch, threads=threads)[0], reference(batch))


@pytest.mark.parametrize("num_seqs", [1, 2, 3, 40])
def test_any_number_of_sequences(kernel, num_seqs):
    """Few sequences split by KV head over the threads, many one task per sequence: same result."""
    lens = [int(x) for x in np.random.default_rng(num_seqs).integers(1, 300, num_seqs)]
    batch = make_paged_batch([1] * num_seqs, lens, num_heads=6, num_kv_heads=2, head_dim=64, seed=num_seqs)
    close(decode(kernel, batch, threads=2)[0], reference(batch))


def test_rows_place_each_sequence_in_its_own_query_row_and_leave_the_others(kernel):
    """In a mixed step the decoding sequences are some rows of the query; prefill rows are not touched."""
    batch = make_paged_batch([1] * 4, [30, 5, 77, 16], num_heads=4, num_kv_heads=2, head_dim=32, seed=1)
    rows = np.array([7, 2, 9, 0])
    mine, whole = decode(kernel, batch, rows=rows, num_rows=12)
    close(mine, reference(batch))
    others = np.setdiff1d(np.arange(12), rows)
    assert whole[others].isnan().all()


@pytest.mark.parametrize("window", [1, 7, 16, 50])
def test_a_sliding_window_reads_only_the_keys_it_reaches(kernel, window):
    """Pages wholly before the window are released (their entries point at the NaN block): never read."""
    batch = make_paged_batch([1] * 5, [100, 3, 64, 65, 129], num_heads=8, num_kv_heads=2, head_dim=64,
                             sliding_window=window, seed=window)
    close(decode(kernel, batch)[0], reference(batch))


def test_softcapped_scores_match(kernel):
    batch = make_paged_batch([1] * 3, [50, 9, 120], num_heads=8, num_kv_heads=4, head_dim=64, seed=2)
    batch.query.mul_(8)  # scores large enough for the cap to matter
    close(decode(kernel, batch, softcap=5.0)[0], reference(batch, softcap=5.0))


@pytest.mark.parametrize("code_dtype", [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "h{num_heads}kv{num_kv_heads}d{head_dim}".format(**s))
def test_an_8bit_cache_is_dequantized_in_the_kernel(kernel, code_dtype, shape):
    """Codes x per-(token, KV head) scales, as the reference dequantizes them (NaN slots get NaN scales)."""
    batch = make_paged_batch([1] * len(SEQ_LENS), SEQ_LENS, seed=4, **shape)
    (kc, ks), (vc, vs) = quantize_kv_ref(batch.key_cache, code_dtype), quantize_kv_ref(batch.value_cache, code_dtype)
    caches = (kc, vc, ks, vs)
    close(decode(kernel, batch, caches=caches)[0], reference(batch, caches=caches))


def test_bad_arguments_are_refused_naming_them(kernel):
    batch = make_paged_batch([1, 1], [5, 9], num_heads=4, num_kv_heads=2, head_dim=32)
    db = DecodeBatch.build(batch.block_tables.numpy(), batch.seq_lens.numpy())
    out = torch.empty_like(batch.query)
    with pytest.raises(ValueError, match="query"):
        kernel(batch.query.half(), batch.key_cache, batch.value_cache, db, 1.0, out)
    with pytest.raises(ValueError, match="key_cache"):
        kernel(batch.query, batch.key_cache[..., :16].contiguous(), batch.value_cache, db, 1.0, out)
    with pytest.raises(ValueError, match="k_scales"):
        kernel(batch.query, batch.key_cache.to(torch.int8), batch.value_cache.to(torch.int8), db, 1.0, out,
               k_scales=torch.ones(3), v_scales=torch.ones(3))
    with pytest.raises(ValueError, match="key_cache"):  # 8-bit codes without scales
        kernel(batch.query, batch.key_cache.to(torch.int8), batch.value_cache.to(torch.int8), db, 1.0, out)
    with pytest.raises(ValueError, match="rows"):
        kernel(batch.query[:1].contiguous(), batch.key_cache, batch.value_cache, db, 1.0, out[:1].contiguous())
    with pytest.raises(ValueError, match="seq_lens"):
        DecodeBatch.build(batch.block_tables.numpy(), np.array([0, 3]))


def test_the_library_is_built_once_per_source_and_reused(tmp_path, kernel):
    first = build_library(SOURCE, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build_library(SOURCE, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


def test_a_cached_fallback_build_is_used_without_running_the_compiler(tmp_path, monkeypatch, kernel):
    """Where the OpenMP build fails, the library built without OpenMP is cached and found next time: no
    compiler run (and no failing OpenMP attempt) at every start."""
    from kernels.cpu import build

    monkeypatch.setattr(build, "OPENMP", ("-fno-such-openmp-flag",))
    fallback = build_library(SOURCE, tmp_path)
    runs = []
    real_run = build.subprocess.run
    monkeypatch.setattr(build.subprocess, "run", lambda cmd, **kw: runs.append(cmd) or real_run(cmd, **kw))
    assert build_library(SOURCE, tmp_path) == fallback
    assert all("--version" in cmd for cmd in runs)  # only the version query, no compile


def test_no_compiler_is_a_clear_error_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(CpuKernelUnavailable, match="C compiler"):
        build_library(SOURCE, tmp_path)


def test_source_that_does_not_compile_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C;\n")
    with pytest.raises(CpuKernelUnavailable, match="bad.c did not compile"):
        build_library(bad, tmp_path / "cache")


def test_query_rows_may_be_a_slice_of_a_wider_buffer(kernel):
    """The engine's query is a view into the fused QKV projection's output: rows a stride apart."""
    batch = make_paged_batch([1] * 3, [40, 8, 90], num_heads=4, num_kv_heads=2, head_dim=32, seed=5)
    fused = torch.randn(3, 4 * 32 + 2 * 2 * 32)
    fused[:, :128] = batch.query.reshape(3, 128)
    query = fused[:, :128].view(3, 4, 32)
    assert not query.is_contiguous()
    db = DecodeBatch.build(batch.block_tables.numpy(), batch.seq_lens.numpy())
    out = torch.full_like(batch.query, float("nan"))
    close(kernel(query, batch.key_cache, batch.value_cache, db, batch.scale, out), reference(batch))


@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="the portable x86-64 build is x86's")
def test_the_portable_build_without_avx2_matches_too(kernel, tmp_path):
    """Built for plain x86-64 the kernel takes its portable loops (no AVX2 / FMA code): same results."""
    portable = load_paged_decode(tmp_path, march="x86-64")
    for caches in (None, "int8"):
        batch = make_paged_batch([1] * len(SEQ_LENS), SEQ_LENS, seed=6, **SHAPES[0])
        if caches:
            (kc, ks), (vc, vs) = quantize_kv_ref(batch.key_cache, torch.int8), quantize_kv_ref(batch.value_cache, torch.int8)
            caches = (kc, vc, ks, vs)
        close(decode(portable, batch, caches=caches, softcap=3.0)[0], reference(batch, softcap=3.0, caches=caches))
