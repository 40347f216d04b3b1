"""kernels/cpu/decode_step.c: int8 linear layers (weight-only in float32, and W8A8), and a whole Llama decode step.

The oracle is torch in float32 on the dequantized weights (`q.float() * scale`): the C code computes the
same products and sums in another order, so results agree to float32 rounding. For W8A8 the reference
quantizes each activation row first (`w8a8_reference`); its integer sums are exact, so it agrees as closely.
The step is checked layer by layer against the same computation written with torch ops and
`paged_attention_ref`, over random paged caches, including the keys and values it stores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels.cpu import (CpuKernelUnavailable, DecodeBatch, LlamaDecodeWeights, LlamaDims, load_decode_step,
                         load_paged_decode)
from kernels.reference import paged_attention_ref, quantize_kv_ref


@pytest.fixture(scope="module")
def kernel():
    try:
        return load_decode_step(load_paged_decode())
    except CpuKernelUnavailable as e:  # .ci/run installs gcc; a machine without a compiler keeps torch's kernels
        pytest.skip(f"no CPU kernel on this machine: {e}")


def int8_weight(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return q, torch.rand(n, generator=g) * 0.01 + 1e-3


def w8a8_weight(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-63, 64, (n, k), generator=g, dtype=torch.int8)  # 7-bit codes
    return q, torch.rand(n, generator=g) * 0.01 + 1e-3, q.sum(dim=1, dtype=torch.int32)


def w8a8_reference(x, q, scale, bias=None):
    """Each row quantized to round(x * (127 / max|x|)) in [-127, 127]; exact integer sums; scaled back. (127 / r
    as a true division: torch's `127 / r` multiplies by r's reciprocal, an ulp away now and then, which moves
    a code that lies on a rounding boundary.)"""
    r = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
    xq = torch.round(x * (torch.full_like(r, 127.0) / r))
    return F.linear(xq.double(), q.double()).float() * scale * (r / 127) + (0 if bias is None else bias)


def threads(n: int):
    class _Threads:
        def __enter__(self):
            self.before = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.before)
    return _Threads()


@pytest.mark.parametrize("n, k", [(16, 576), (35, 100), (7, 13), (960, 576), (64, 1536)])
@pytest.mark.parametrize("rows", [0, 1, 3, 4, 5, 8, 33, 130])  # 130: past two 64-row chunks
@pytest.mark.parametrize("num_threads", [1, 2])
def test_int8_linear_is_the_dequantized_weights_float32_product(kernel, n, k, rows, num_threads):
    q, scale = int8_weight(n, k, seed=n * 1000 + k)
    bias = torch.randn(n) if rows % 2 else None
    x = torch.randn(rows, k)
    with threads(num_threads):
        y = kernel.int8_linear(x, q, scale, bias)
    ref = F.linear(x, q.float() * scale[:, None], bias)
    assert y.shape == (rows, n) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()) if rows else 0)


@pytest.mark.parametrize("n, k", [(16, 576), (35, 100), (7, 13), (64, 1536)])
@pytest.mark.parametrize("rows", [0, 1, 3, 4, 5, 33, 130])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_w8a8_linear_quantizes_each_row_and_sums_exactly(kernel, n, k, rows, num_threads):
    q, scale, wsum = w8a8_weight(n, k, seed=n + k)
    bias = torch.randn(n) if rows % 2 else None
    x = torch.randn(rows, k) * torch.rand(rows, 1) * 10  # rows of different ranges: one scale each
    with threads(num_threads):
        y = kernel.w8a8_linear(x, q, scale, wsum, bias)
    ref = w8a8_reference(x, q, scale, bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()) if rows else 0)


def test_w8a8_linear_needs_the_code_sums(kernel):
    q, scale, wsum = w8a8_weight(8, 32, seed=1)
    with pytest.raises(ValueError, match="^wsum: need contiguous int32"):
        kernel.w8a8_linear(torch.randn(2, 32), q, scale, wsum.long())


def test_int8_linear_reads_rows_of_a_wider_tensor(kernel):
    """A slice of a fused projection's output (rows farther apart than K) is read in place."""
    q, scale = int8_weight(40, 64, seed=1)
    wide = torch.randn(6, 100)
    x = wide[:, 10:74]
    assert x.stride(0) == 100
    torch.testing.assert_close(kernel.int8_linear(x, q, scale), F.linear(x, q.float() * scale[:, None]))


def test_int8_linear_names_the_argument_it_cannot_take(kernel):
    q, scale = int8_weight(8, 16, seed=2)
    with pytest.raises(ValueError, match="^x: need float32"):
        kernel.int8_linear(torch.randn(2, 16, dtype=torch.float64), q, scale)
    with pytest.raises(ValueError, match="^x: need float32"):
        kernel.int8_linear(torch.randn(16, 2).t(), q, scale)  # column-major
    with pytest.raises(ValueError, match="^qweight: need contiguous int8"):
        kernel.int8_linear(torch.randn(2, 16), q.float(), scale)
    with pytest.raises(ValueError, match="^qweight: need contiguous int8"):
        kernel.int8_linear(torch.randn(2, 16), q, scale[:4])
    with pytest.raises(ValueError, match="^qweight: need contiguous int8"):  # a strided bias is not read as one
        kernel.int8_linear(torch.randn(2, 16), q, scale, torch.randn(16)[::2])


def test_a_library_from_another_source_is_refused_at_load(tmp_path):
    """The binding and the C code must agree on a layer's tensor list: a mismatch is an error, not a crash."""
    from pathlib import Path

    from kernels.cpu import build_library
    from kernels.cpu.decode_step import SOURCE, DecodeStepKernel

    from kernels.cpu.build import find_compiler

    try:
        find_compiler()
    except CpuKernelUnavailable as e:
        pytest.skip(f"no C compiler: {e}")
    other = tmp_path / "decode_step.c"  # one more field than the binding knows
    other.write_text(Path(SOURCE).read_text().replace("VSCALES, LAYER_FIELDS", "VSCALES, NEWER, LAYER_FIELDS"))
    library = build_library(other, tmp_path)
    with pytest.raises(CpuKernelUnavailable, match="reads 23 tensors a layer, this binding passes 22"):
        DecodeStepKernel(library, load_paged_decode(tmp_path))


def test_the_portable_build_computes_the_same_products(tmp_path):
    """Built for plain x86-64 (no AVX2): the scalar loops a machine without AVX2 runs."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the portable build is checked on x86-64")
    try:
        portable = load_decode_step(load_paged_decode(tmp_path, march="x86-64"), tmp_path, march="x86-64")
    except CpuKernelUnavailable as e:
        pytest.skip(f"no C compiler: {e}")
    q, scale = int8_weight(33, 70, seed=3)
    x = torch.randn(5, 70)
    torch.testing.assert_close(portable.int8_linear(x, q, scale), F.linear(x, q.float() * scale[:, None]))


# ---- the whole decode step ------------------------------------------------------------------------------------

DIMS = LlamaDims(hidden=48, num_heads=6, num_kv_heads=2, head_dim=16, intermediate=80, block_size=4, eps=1e-5,
                 scale=16 ** -0.5)


def random_model(dims: LlamaDims, num_layers: int, num_blocks: int, bias: bool, seed: int, w8a8: bool = False,
                 kv8: bool = False):
    g = torch.Generator().manual_seed(seed)
    h, nh, kvh, d, i = dims.hidden, dims.num_heads, dims.num_kv_heads, dims.head_dim, dims.intermediate
    shapes = {"qkv": ((nh + 2 * kvh) * d, h), "o": (h, nh * d), "gate_up": (2 * i, h), "down": (h, i)}
    layers = []
    for n in range(num_layers):
        layer = {"input_norm": torch.rand(h, generator=g) + 0.5, "post_norm": torch.rand(h, generator=g) + 0.5,
                 "key_cache": torch.randn(num_blocks, dims.block_size, kvh, d, generator=g),
                 "value_cache": torch.randn(num_blocks, dims.block_size, kvh, d, generator=g)}
        if kv8:  # an int8 cache: codes and a scale per (token, KV head)
            for name in ("key", "value"):
                codes, scales = quantize_kv_ref(layer[f"{name}_cache"], torch.int8)
                layer[f"{name}_cache"], layer[f"{name}_scales"] = codes, scales
        for stem, (rows, cols) in shapes.items():
            q, scale = int8_weight(rows, cols, seed=seed * 100 + n * 10 + len(stem))
            if w8a8:
                q, scale, layer[f"{stem}_wsum"] = w8a8_weight(rows, cols, seed=seed * 100 + n * 10 + len(stem))
                scale = scale * 2
            layer[f"{stem}_weight"], layer[f"{stem}_scale"] = q, scale * (4 / cols ** 0.5)
            layer[f"{stem}_bias"] = torch.randn(rows, generator=g) * 0.1 if bias and stem == "qkv" else None
        layers.append(layer)
    embed = torch.randn(50, h, generator=g)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.arange(64).float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return LlamaDecodeWeights.build(layers, embed, torch.rand(h, generator=g) + 0.5, emb.cos(), emb.sin(), dims,
                                    w8a8=w8a8)


def reference_step(w: LlamaDecodeWeights, ids, positions, slots, tables, seq_lens):
    """The same step in torch ops, on copies of the caches; returns (hidden, caches after the step)."""
    dims = w.dims
    nh, kvh, d, m = dims.num_heads, dims.num_kv_heads, dims.head_dim, len(ids)

    def lin(x, layer, stem):
        if w.w8a8:
            return w8a8_reference(x, layer[f"{stem}_weight"], layer[f"{stem}_scale"], layer[f"{stem}_bias"])
        return F.linear(x, layer[f"{stem}_weight"].float() * layer[f"{stem}_scale"][:, None], layer[f"{stem}_bias"])

    def rope(x):
        c, s = w.cos[positions, :d // 2][:, None], w.sin[positions, :d // 2][:, None]
        x1, x2 = x[..., :d // 2], x[..., d // 2:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    x, caches = w.embed[ids], []
    cu = torch.arange(m + 1, dtype=torch.int32)
    for layer in w.layers:
        kc, vc = layer["key_cache"].clone(), layer["value_cache"].clone()
        scales = layer.get("key_scales")
        ks, vs = (None, None) if scales is None else (scales.clone(), layer["value_scales"].clone())
        qkv = lin(torch.rms_norm(x, (dims.hidden,), layer["input_norm"], dims.eps), layer, "qkv")
        q, k = rope(qkv[:, :nh * d].view(m, nh, d)), rope(qkv[:, nh * d:(nh + kvh) * d].view(m, kvh, d))
        v = qkv[:, (nh + kvh) * d:].view(m, kvh, d)
        keep = slots >= 0
        if ks is None:
            kc.view(-1, kvh, d)[slots[keep]] = k[keep]
            vc.view(-1, kvh, d)[slots[keep]] = v[keep]
        else:
            for cache, sc, t in ((kc, ks, k), (vc, vs, v)):
                codes, scale = quantize_kv_ref(t[keep], torch.int8)
                cache.view(-1, kvh, d)[slots[keep]] = codes
                sc.view(-1, kvh)[slots[keep]] = scale
        o = paged_attention_ref(q, kc, vc, tables.int(), cu, seq_lens.int(), dims.scale, k_scales=ks, v_scales=vs)
        x = x + lin(o.reshape(m, nh * d), layer, "o")
        gate, up = lin(torch.rms_norm(x, (dims.hidden,), layer["post_norm"], dims.eps), layer, "gate_up").chunk(2, -1)
        x = x + lin(F.silu(gate) * up, layer, "down")
        caches.append((kc, vc, ks, vs))
    return torch.rms_norm(x, (dims.hidden,), w.final_norm, dims.eps), caches


def step_inputs(seq_lens: list[int], num_blocks: int, block_size: int, seed: int):
    """Each sequence's block table (distinct random blocks) and its new token at position seq_len - 1."""
    rng = np.random.default_rng(seed)
    width = max(-(-n // block_size) for n in seq_lens)
    perm = rng.permutation(num_blocks)[:len(seq_lens) * width].reshape(len(seq_lens), width)
    lens = np.array(seq_lens, dtype=np.int64)
    pos = lens - 1
    slots = perm[np.arange(len(lens)), pos // block_size] * block_size + pos % block_size
    ids = rng.integers(0, 50, len(lens))
    return (torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(slots.astype(np.int64)),
            torch.from_numpy(perm.astype(np.int64)), torch.from_numpy(lens))


@pytest.mark.parametrize("seq_lens", [[1], [7], [3, 9, 1, 16, 30], [5] * 9])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("w8a8", [False, True])
def test_the_decode_step_is_the_layers_computed_in_torch(kernel, seq_lens, bias, num_threads, w8a8):
    w = random_model(DIMS, num_layers=3, num_blocks=80, bias=bias, seed=len(seq_lens) + 7 * bias, w8a8=w8a8)
    ids, pos, slots, tables, lens = step_inputs(seq_lens, 80, DIMS.block_size, seed=sum(seq_lens))
    ref, ref_caches = reference_step(w, ids, pos, slots, tables, lens)
    with threads(num_threads):
        out = kernel.llama_decode(w, ids, pos, slots, DecodeBatch.build(tables.numpy(), lens.numpy()))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for layer, (kc, vc, _, _) in zip(w.layers, ref_caches):  # the step's keys and values stored, nothing else
        torch.testing.assert_close(layer["key_cache"], kc, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer["value_cache"], vc, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seq_lens", [[1], [3, 9, 1, 16, 30]])
@pytest.mark.parametrize("w8a8", [False, True])
def test_the_decode_step_over_an_int8_cache_stores_codes_and_scales_as_the_reference(kernel, seq_lens, w8a8):
    w = random_model(DIMS, num_layers=2, num_blocks=80, bias=False, seed=11 + len(seq_lens), w8a8=w8a8, kv8=True)
    ids, pos, slots, tables, lens = step_inputs(seq_lens, 80, DIMS.block_size, seed=5)
    ref, ref_caches = reference_step(w, ids, pos, slots, tables, lens)
    out = kernel.llama_decode(w, ids, pos, slots, DecodeBatch.build(tables.numpy(), lens.numpy()))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for layer, (kc, vc, ks, vs) in zip(w.layers, ref_caches):
        # a code may differ by one where the inputs' float32 rounding differs (the norms' summation order)
        assert int((layer["key_cache"].int() - kc.int()).abs().max()) <= 1
        assert int((layer["value_cache"].int() - vc.int()).abs().max()) <= 1
        torch.testing.assert_close(layer["key_scales"], ks, rtol=1e-5, atol=0)
        torch.testing.assert_close(layer["value_scales"], vs, rtol=1e-5, atol=0)


def test_a_negative_slot_stores_nothing(kernel):
    w = random_model(DIMS, num_layers=1, num_blocks=20, bias=False, seed=3)
    ids, pos, slots, tables, lens = step_inputs([6, 2], 20, DIMS.block_size, seed=4)
    before = w.layers[0]["key_cache"].clone()
    slots[1] = -1
    kernel.llama_decode(w, ids, pos, slots, DecodeBatch.build(tables.numpy(), lens.numpy()))
    changed = (w.layers[0]["key_cache"] != before).any(dim=(2, 3)).nonzero().tolist()
    assert changed == [[int(slots[0]) // DIMS.block_size, int(slots[0]) % DIMS.block_size]]


def test_the_weights_are_checked_when_gathered():
    w = random_model(DIMS, num_layers=1, num_blocks=4, bias=False, seed=5)
    layer = dict(w.layers[0], down_weight=w.layers[0]["down_weight"].float())
    with pytest.raises(ValueError, match=r"^layers\[0\].down_weight: need contiguous int8"):
        LlamaDecodeWeights.build([layer], w.embed, w.final_norm, w.cos, w.sin, DIMS)
    layer = dict(w.layers[0], key_cache=w.layers[0]["key_cache"].half())
    with pytest.raises(ValueError, match=r"^layers\[0\].key_cache: need a contiguous float32"):
        LlamaDecodeWeights.build([layer], w.embed, w.final_norm, w.cos, w.sin, DIMS)
    with pytest.raises(ValueError, match=r"^layers\[0\].qkv_wsum: need contiguous int32"):  # w8a8 without sums
        LlamaDecodeWeights.build(w.layers, w.embed, w.final_norm, w.cos, w.sin, DIMS, w8a8=True)


def test_a_batch_with_other_rows_is_refused(kernel):
    """The step computes every row as a decode row: a batch whose rows are not 0..S-1 of the step is not one."""
    w = random_model(DIMS, num_layers=1, num_blocks=20, bias=False, seed=6)
    ids, pos, slots, tables, lens = step_inputs([6, 2], 20, DIMS.block_size, seed=4)
    batch = DecodeBatch.build(tables.numpy(), lens.numpy(), np.array([0, 2]), num_query_rows=3)
    with pytest.raises(ValueError, match="^batch: need one decode row per sequence"):
        kernel.llama_decode(w, ids, pos, slots, batch)
