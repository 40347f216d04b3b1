"""Kernel tests run on the GPU when there is one, else on the CPU under the Triton interpreter.

TRITON_INTERPRET is read when triton is first imported, so it is set here, before any test module (or
kernels' lazy import) brings triton in. The interpreter has no bf16: CPU runs use fp16 and fp32.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Kernel vs fp32 reference: the kernel accumulates in fp32 too, so the gap is the output rounding plus the
# rounding of the softmax weights to the input dtype before the P @ V product.
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def assert_matches():
    """assert_matches(out, ref): no NaN anywhere in out, and out within the dtype's tolerance of ref."""

    def check(out: torch.Tensor, ref: torch.Tensor) -> None:
        assert out.dtype == ref.dtype
        assert not out.isnan().any(), f"{int(out.isnan().sum())} output elements are NaN (unwritten or poisoned)"
        torch.testing.assert_close(out, ref, **TOLERANCES[out.dtype])

    return check
