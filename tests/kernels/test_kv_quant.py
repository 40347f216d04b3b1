"""The 8-bit KV cache in the kernels: store_kv writes exactly the reference's codes and scales, and both
attention kernels (decode and varlen) read them back as the reference does, for int8, fp8 e4m3 and fp8 e5m2.

On the CPU these run under the Triton interpreter, fp8 included: the store kernel rounds fp8 codes in fp32
before the cast (kernels.kv_quant), so the interpreter's own inexact fp32 -> fp8 conversion never rounds
anything, and codes are compared bit for bit. Batches come from kernels.batch (shuffled pages, NaN in every
slot no sequence owns, which quantizes to a NaN scale), so a stray read still poisons the output.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.batch import make_paged_batch
from kernels.reference import dequantize_kv_ref, paged_attention_ref, quantize_kv_ref, store_kv_ref

FORMATS = [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2]
FORMAT_IDS = ["int8", "fp8_e4m3", "fp8_e5m2"]


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.uint8)


def empty_cache(num_blocks, block_size, kvh, d, code_dtype, device):
    """Codes filled with a sentinel byte and scales with -1, to see what the store leaves alone."""
    codes = [torch.full((num_blocks, block_size, kvh, d), 0x55, dtype=torch.uint8, device=device).view(code_dtype)
             for _ in range(2)]
    scales = [torch.full((num_blocks, block_size, kvh), -1.0, device=device) for _ in range(2)]
    return codes, scales


@pytest.mark.parametrize("code_dtype", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kvh,d,block_size", [(2, 64, 16), (3, 80, 32), (1, 128, 16), (8, 16, 1), (5, 96, 8)])
def test_store_writes_the_reference_codes_and_scales_bit_for_bit(code_dtype, dtype, kvh, d, block_size, device):
    tokens = 23
    num_blocks = tokens // block_size + 2
    gen = torch.Generator().manual_seed(kvh * d + block_size)
    # tokens of very different magnitudes, one all-zero token and one with a single huge outlier
    key = torch.randn(tokens, kvh, d, generator=gen) * torch.logspace(-4, 4, tokens)[:, None, None]
    key[3] = 0.0
    key[5, 0, 1] = 3e4
    value = torch.randn(tokens, kvh, d, generator=gen)
    key, value = key.to(dtype).to(device), value.to(dtype).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[::4] = -1  # skipped tokens (padding)
    slots = slots.to(device)

    (kc, vc), (ks, vs) = empty_cache(num_blocks, block_size, kvh, d, code_dtype, device)
    kernels.store_kv(key, value, kc, vc, slots, k_scales=ks, v_scales=vs)
    (kc_ref, vc_ref), (ks_ref, vs_ref) = empty_cache(num_blocks, block_size, kvh, d, code_dtype, device)
    store_kv_ref(key, value, kc_ref, vc_ref, slots, ks_ref, vs_ref)

    assert torch.equal(bits(kc), bits(kc_ref)) and torch.equal(bits(vc), bits(vc_ref))
    assert torch.equal(ks, ks_ref) and torch.equal(vs, vs_ref)
    written = int((slots >= 0).sum())
    assert int((ks != -1).sum()) == written * kvh  # nothing else touched


@pytest.mark.parametrize("code_dtype", FORMATS, ids=FORMAT_IDS)
def test_store_reads_key_and_value_sliced_from_a_fused_qkv_buffer(code_dtype, device):
    qkv = torch.randn(12, 8 + 2 + 2, 32, device=device, dtype=torch.float16)
    key, value = qkv[:, 8:10], qkv[:, 10:12]
    slots = torch.arange(12, device=device) * 3
    (kc, vc), (ks, vs) = empty_cache(3, 16, 2, 32, code_dtype, device)
    kernels.store_kv(key, value, kc, vc, slots, k_scales=ks, v_scales=vs)
    codes, scales = quantize_kv_ref(value.contiguous(), code_dtype)
    assert torch.equal(bits(vc.view(-1, 2, 32)[slots]), bits(codes))
    assert torch.equal(vs.view(-1, 2)[slots], scales)


def quantized(batch, code_dtype):
    """The batch's caches as an 8-bit cache (NaN slots get NaN scales: still poison)."""
    kc, ks = quantize_kv_ref(batch.key_cache, code_dtype)
    vc, vs = quantize_kv_ref(batch.value_cache, code_dtype)
    return kc, vc, ks, vs


def attend(batch, code_dtype, **kw):
    kc, vc, ks, vs = quantized(batch, code_dtype)
    args = (batch.query, kc, vc, batch.block_tables, batch.cu_seqlens_q, batch.seq_lens, batch.scale)
    out = torch.full_like(batch.query, float("nan"))
    kernels.paged_attention(*args, out=out, k_scales=ks, v_scales=vs, sliding_window=batch.sliding_window, **kw)
    ref = paged_attention_ref(*args, k_scales=ks, v_scales=vs, sliding_window=batch.sliding_window,
                              softcap=kw.get("softcap"))
    return out, ref


# (q_len, seq_len) per sequence: decode, whole prefill, chunked prefill / prefix hit, empty query, single token
MIXED = [(1, 45), (37, 37), (13, 80), (0, 20), (1, 1), (5, 21)]
DECODE = [(1, 45), (1, 130), (1, 1), (0, 9), (1, 64)]
SHAPES = [dict(num_heads=8, num_kv_heads=2, head_dim=64, block_size=16),
          dict(num_heads=9, num_kv_heads=3, head_dim=80, block_size=32),
          dict(num_heads=4, num_kv_heads=4, head_dim=128, block_size=8),
          dict(num_heads=8, num_kv_heads=1, head_dim=32, block_size=1)]


def batch_of(lens, **kw):
    q_lens, seq_lens = zip(*lens)
    return make_paged_batch(list(q_lens), list(seq_lens), **kw)


@pytest.mark.parametrize("code_dtype", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_varlen_kernel_reads_the_8bit_cache_like_the_reference(code_dtype, dtype, device, assert_matches):
    batch = batch_of(MIXED, num_heads=8, num_kv_heads=2, head_dim=64, dtype=dtype, device=device)
    assert_matches(*attend(batch, code_dtype))


@pytest.mark.parametrize("code_dtype", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_kernel_reads_the_8bit_cache_like_the_reference(code_dtype, num_splits, device, assert_matches):
    batch = batch_of(DECODE, num_heads=8, num_kv_heads=2, head_dim=64, dtype=torch.float16, device=device)
    assert_matches(*attend(batch, code_dtype, max_query_len=1, num_splits=num_splits))


@pytest.mark.parametrize("code_dtype", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "H{num_heads}-KVH{num_kv_heads}-D{head_dim}-B{block_size}".format(**s))
def test_shapes_both_kernels(code_dtype, shape, device, assert_matches):
    batch = batch_of([(1, 50), (1, 7)], dtype=torch.float32, device=device, seed=1, **shape)
    assert_matches(*attend(batch, code_dtype, max_query_len=1))
    batch = batch_of([(19, 40), (3, 3), (1, 23)], dtype=torch.float32, device=device, seed=2, **shape)
    assert_matches(*attend(batch, code_dtype))


@pytest.mark.parametrize("code_dtype", FORMATS, ids=FORMAT_IDS)
def test_sliding_window_and_softcap_with_an_8bit_cache(code_dtype, device, assert_matches):
    batch = batch_of([(1, 90), (20, 70), (4, 40)], num_heads=4, num_kv_heads=2, head_dim=64, dtype=torch.float32,
                     device=device, sliding_window=24)
    assert_matches(*attend(batch, code_dtype, softcap=30.0))
    batch = batch_of([(1, 90), (1, 33)], num_heads=4, num_kv_heads=2, head_dim=64, dtype=torch.float32,
                     device=device, sliding_window=24)
    assert_matches(*attend(batch, code_dtype, max_query_len=1, num_splits=2))


def test_stored_then_attended_equals_attention_over_the_dequantized_cache(device, assert_matches):
    """The engine's order: store this step's K/V (quantizing), then attend; the result is attention over
    exactly the dequantized values, new tokens included."""
    batch = batch_of([(6, 6), (1, 20)], num_heads=4, num_kv_heads=2, head_dim=32, dtype=torch.float16,
                     device=device)
    kc, vc, ks, vs = quantized(batch, torch.int8)
    key = torch.randn(7, 2, 32, device=device, dtype=torch.float16)
    value = torch.randn(7, 2, 32, device=device, dtype=torch.float16)
    tables = batch.block_tables.long()
    slots = torch.cat([tables[0, 0] * 16 + torch.arange(6, device=device), tables[1, 1:2] * 16 + 3])
    kernels.store_kv(key, value, kc, vc, slots, k_scales=ks, v_scales=vs)
    args = (batch.query, kc, vc, batch.block_tables, batch.cu_seqlens_q, batch.seq_lens, batch.scale)
    out = kernels.paged_attention(*args, k_scales=ks, v_scales=vs)
    k_deq, v_deq = dequantize_kv_ref(kc, ks, torch.float16), dequantize_kv_ref(vc, vs, torch.float16)
    expected = paged_attention_ref(batch.query, k_deq, v_deq, *args[3:])
    assert_matches(out, expected)


def test_bad_scale_arguments_are_refused_naming_them(device):
    kc = torch.zeros(2, 16, 2, 32, dtype=torch.int8, device=device)
    s = torch.ones(2, 16, 2, device=device)
    key = torch.zeros(1, 2, 32, device=device)
    slots = torch.zeros(1, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="^v_scales: k_scales and v_scales go together"):
        kernels.store_kv(key, key, kc, kc.clone(), slots, k_scales=s)
    with pytest.raises(ValueError, match="^k_scales: expected shape"):
        kernels.store_kv(key, key, kc, kc.clone(), slots, k_scales=s[:, :8], v_scales=s)
    with pytest.raises(ValueError, match="^key_cache: dtype must be one of"):
        kernels.store_kv(key, key, kc.float(), kc.float(), slots, k_scales=s, v_scales=s)
    with pytest.raises(ValueError, match="^key_cache: dtype must be one of"):
        kernels.store_kv(key, key, kc, kc.clone(), slots)  # an int8 cache without scales
