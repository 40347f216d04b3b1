"""The fused element-wise kernels (RMSNorm with the residual add, RoPE, SiLU-and-mul) against their torch
references over many shapes, every output element written (outputs start as NaN), inputs as the model passes
them (strided views of fused projection outputs). RoPE is bit-identical; the others are within rounding."""

from __future__ import annotations

import pytest
import torch

import kernels
from engine.models.layers import RMSNorm, apply_rope, silu_and_mul as torch_silu_and_mul
from kernels.reference import add_rms_norm_ref, rms_norm_ref, rope_ref, silu_and_mul_ref

DTYPES = [torch.float32, torch.float16]
# One rounding of the output (fp16: 2^-11 relative) plus the sum order and rsqrt / exp in the last bits.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def qkv_views(t: int, h: int, kvh: int, d: int, dtype: torch.dtype, device: str):
    """q, k, v as the model has them: views of one [T, (H + 2 KVH) * D] projection output."""
    qkv = torch.randn(t, (h + 2 * kvh) * d, dtype=dtype, device=device)
    q, k, v = qkv.split([h * d, kvh * d, kvh * d], dim=-1)
    return qkv, q.view(t, h, d), k.view(t, kvh, d), v.view(t, kvh, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 16), (3, 64), (17, 100), (5, 576), (2, 4096), (4, 3000)])
def test_rms_norm_matches_the_reference(rows, n, dtype, device):
    x = torch.randn(rows, n, dtype=dtype, device=device) * 3
    weight = torch.randn(n, dtype=dtype, device=device)
    out = kernels.rms_norm(x, weight, 1e-5, out=nan_like(x))
    torch.testing.assert_close(out, rms_norm_ref(x, weight, 1e-5), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_the_model_layer_on_per_head_strided_views(dtype, device):
    """Qwen3's q/k norms: [T, H, D] views with a token stride of the whole qkv row."""
    _, q, k, _ = qkv_views(7, 4, 2, 64, dtype, device)
    layer = RMSNorm(64, 1e-6).to(device=device, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64))
        for x in (q, k):
            out = kernels.rms_norm(x, layer.weight, 1e-6)
            assert out.shape == x.shape and out.is_contiguous()
            torch.testing.assert_close(out, layer.forward(x.to("cpu")).to(device), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 32), (9, 576), (3, 2048), (2, 5000)])
def test_add_rms_norm_updates_the_residual_exactly_and_normalises_the_sum(rows, n, dtype, device):
    residual = torch.randn(rows, n, dtype=dtype, device=device)
    delta = torch.randn(rows, n, dtype=dtype, device=device)
    weight = torch.rand(n, dtype=dtype, device=device) + 0.5
    expected_residual = residual.clone()
    expected = add_rms_norm_ref(expected_residual, delta, weight, 1e-6)
    out = kernels.add_rms_norm(residual, delta, weight, 1e-6, out=nan_like(residual))
    assert torch.equal(residual, expected_residual)  # the add is one rounding, as torch's in-place add
    torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h,kvh,d", [(1, 1, 1, 16), (5, 4, 2, 64), (33, 8, 1, 80), (3, 32, 8, 128),
                                       (2, 6, 3, 96), (4, 2, 2, 256)])
def test_rope_is_bit_identical_to_the_model_and_the_reference(t, h, kvh, d, dtype, device):
    qkv, q, k, v = qkv_views(t, h, kvh, d, dtype, device)
    angles = torch.rand(t, 1, d // 2, device=device) * 6
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    want_q, want_k = apply_rope(q, (cos, sin)), apply_rope(k, (cos, sin))
    ref_q, ref_k = q.clone(), k.clone()
    rope_ref(ref_q, ref_k, cos, sin)
    v_before = v.clone()
    kernels.rope_(q, k, cos, sin)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    assert torch.equal(q, ref_q) and torch.equal(k, ref_k)
    assert torch.equal(v, v_before)  # the value part of the fused buffer is not touched


def test_rope_accepts_two_dimensional_tables(device):
    _, q, k, _ = qkv_views(4, 2, 1, 32, torch.float32, device)
    angles = torch.rand(4, 16, device=device)
    want_q, want_k = q.clone(), k.clone()
    rope_ref(want_q, want_k, angles.cos(), angles.sin())
    kernels.rope_(q, k, angles.cos(), angles.sin())
    assert torch.equal(q, want_q) and torch.equal(k, want_k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,inter", [(1, 1), (3, 7), (17, 64), (2, 1000), (4, 1100), (2, 3072)])
def test_silu_and_mul_matches_the_reference_and_the_model(t, inter, dtype, device):
    gate_up = torch.randn(t, 2 * inter, dtype=dtype, device=device) * 4
    out = kernels.silu_and_mul(gate_up, out=torch.full((t, inter), float("nan"), dtype=dtype, device=device))
    torch.testing.assert_close(out, silu_and_mul_ref(gate_up), **TOL[dtype])
    torch.testing.assert_close(out, torch_silu_and_mul(gate_up.cpu()).to(device), **TOL[dtype])


def test_zero_rows_launch_nothing(device):
    x = torch.empty(0, 64, device=device)
    assert kernels.rms_norm(x, torch.ones(64, device=device), 1e-6).shape == (0, 64)
    assert kernels.silu_and_mul(torch.empty(0, 8, device=device)).shape == (0, 4)
    kernels.rope_(torch.empty(0, 2, 16, device=device), torch.empty(0, 1, 16, device=device),
                  torch.empty(0, 8, device=device), torch.empty(0, 8, device=device))


def _rms_case(**bad):
    args = dict(x=torch.randn(3, 64), weight=torch.ones(64), eps=1e-6, out=None)
    args.update(bad)
    return args


@pytest.mark.parametrize("name,args", [
    ("x", _rms_case(x=torch.randn(64))),
    ("x", _rms_case(x=torch.randn(3, 64).int())),
    ("x", _rms_case(x=torch.randn(64, 3).t())),
    ("weight", _rms_case(weight=torch.ones(32))),
    ("weight", _rms_case(weight=torch.ones(64, 1))),
    ("eps", _rms_case(eps=-1.0)),
    ("eps", _rms_case(eps=float("nan"))),
    ("out", _rms_case(out=torch.empty(3, 64, dtype=torch.float16))),
    ("out", _rms_case(out=torch.empty(3, 32))),
])
def test_rms_norm_rejects_bad_arguments_naming_them(name, args):
    with pytest.raises(ValueError, match=f"^{name}: "):
        kernels.rms_norm(**args)


def test_add_rms_norm_rejects_a_delta_of_another_shape():
    with pytest.raises(ValueError, match="^delta: expected shape"):
        kernels.add_rms_norm(torch.randn(3, 64), torch.randn(2, 64), torch.ones(64), 1e-6)


@pytest.mark.parametrize("name,change", [
    ("q", lambda a: a.update(q=torch.randn(2, 4, 15))),
    ("k", lambda a: a.update(k=torch.randn(3, 1, 16))),
    ("k", lambda a: a.update(k=a["k"].half())),
    ("cos", lambda a: a.update(cos=torch.randn(2, 16))),
    ("sin", lambda a: a.update(sin=a["sin"].half())),
])
def test_rope_rejects_bad_arguments_naming_them(name, change):
    args = dict(q=torch.randn(2, 4, 16), k=torch.randn(2, 1, 16), cos=torch.randn(2, 8), sin=torch.randn(2, 8))
    change(args)
    with pytest.raises(ValueError, match=f"^{name}: "):
        kernels.rope_(**args)


def test_silu_and_mul_rejects_an_odd_width_and_a_wrong_out():
    with pytest.raises(ValueError, match="^gate_up: width must be even"):
        kernels.silu_and_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="^out: expected shape"):
        kernels.silu_and_mul(torch.randn(2, 8), out=torch.empty(2, 8))
