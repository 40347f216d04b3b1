"""On a real GPU: the fused element-wise kernels in bf16 (which the interpreter cannot run) against their
references and the model's torch path, RoPE bit for bit; and one compiled variant per kernel configuration
across batch sizes and table widths, read from the JIT's own cache. Skipped where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch

import kernels
from engine.models.layers import apply_rope
from kernels.batch import make_paged_batch
from kernels.reference import add_rms_norm_ref, rms_norm_ref, silu_and_mul_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=3e-3, rtol=3e-3),
       torch.float32: dict(atol=1e-5, rtol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fused_element_wise_kernels_at_llama_8b_widths(dtype):
    t = 300
    x = torch.randn(t, 4096, dtype=dtype, device="cuda")
    delta = torch.randn(t, 4096, dtype=dtype, device="cuda")
    weight = torch.rand(4096, dtype=dtype, device="cuda") + 0.5
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5), rms_norm_ref(x, weight, 1e-5), **TOL[dtype])
    residual, want_residual = x.clone(), x.clone()
    want = add_rms_norm_ref(want_residual, delta, weight, 1e-5)
    torch.testing.assert_close(kernels.add_rms_norm(residual, delta, weight, 1e-5), want, **TOL[dtype])
    assert torch.equal(residual, want_residual)

    qkv = torch.randn(t, 48 * 128, dtype=dtype, device="cuda")
    q, k = qkv[:, :4096].view(t, 32, 128), qkv[:, 4096:5120].view(t, 8, 128)
    angles = torch.rand(t, 1, 64, device="cuda") * 6
    rope = (angles.cos().to(dtype), angles.sin().to(dtype))
    want_q, want_k = apply_rope(q, rope), apply_rope(k, rope)  # torch's CUDA ops
    kernels.rope_(q, k, *rope)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)

    gate_up = torch.randn(t, 2 * 14336, dtype=dtype, device="cuda") * 3
    torch.testing.assert_close(kernels.silu_and_mul(gate_up), silu_and_mul_ref(gate_up), **TOL[dtype])


def _compiled_variants(kernel) -> int:
    return sum(len(caches[0]) for caches in kernel.device_caches.values())  # [0]: the kernel cache by launch key


def test_batch_size_and_table_width_compile_nothing_new():
    from kernels.decode_attention import _decode_kernel, _reduce_splits_kernel
    from kernels.unified_attention import _unified_attention_kernel

    counts = []  # compiled variants of each kernel after each round (earlier tests may have compiled others)
    for batch_size in (1, 3, 16, 17, 40):
        for extra_columns in (0, 1, 15):
            decode = make_paged_batch([1] * batch_size, [100 + 7 * i for i in range(batch_size)], num_heads=32,
                                      num_kv_heads=8, head_dim=128, dtype=torch.bfloat16, device="cuda",
                                      extra_table_cols=extra_columns)
            kernels.paged_attention(*decode.args(), max_query_len=1, num_splits=3)
            mixed = make_paged_batch([1, 5] * batch_size, [90, 200] * batch_size, num_heads=32, num_kv_heads=8,
                                     head_dim=128, dtype=torch.bfloat16, device="cuda",
                                     extra_table_cols=extra_columns)
            kernels.paged_attention(*mixed.args(), max_query_len=5)
            counts.append([_compiled_variants(k) for k in (_decode_kernel, _reduce_splits_kernel,
                                                             _unified_attention_kernel)])
    torch.cuda.synchronize()
    assert all(c == counts[0] for c in counts), counts
