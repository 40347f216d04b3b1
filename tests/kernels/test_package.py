"""The package surface: what imports without triton, and that submodules never shadow the public functions."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import kernels

REPO_ROOT = Path(__file__).resolve().parents[2]

WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
import torch
import kernels
from kernels.batch import make_paged_batch
from kernels.reference import paged_attention_ref, store_kv_ref
from kernels.moe_reference import fused_moe_ref
from kernels.reference import int4_matmul_ref
codes_8 = torch.full((2, 32), 0x88, dtype=torch.uint8)  # every code 8: each weight is its group's zero, 1
assert int4_matmul_ref(torch.ones(1, 64), codes_8, torch.ones(2, 2, 2), 32).tolist() == [[64.0, 64.0]]
batch = make_paged_batch([2], [5], num_heads=2, num_kv_heads=1, head_dim=16)
out = paged_attention_ref(*batch.args())
assert out.shape == (2, 2, 16) and not out.isnan().any()
assert kernels.decode_num_splits(1, 32, 8, 128, 8192, torch.float16) > 1
from engine.models.layers import RMSNorm, silu_and_mul  # the model's CPU path needs no triton either
assert RMSNorm(8, 1e-6)(torch.randn(2, 8)).shape == (2, 8) and silu_and_mul(torch.randn(2, 8)).shape == (2, 4)
print("ok")
"""


def test_package_and_reference_work_without_triton():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_public_functions_survive_importing_every_submodule():
    for name in ("planning", "validation", "reference", "batch", "attention_tile", "unified_attention",
                 "decode_attention", "kv_store", "bench", "launch", "norm", "rotary", "activation",
                 "compile_report", "specialization", "moe_kernel", "moe_reference",
                 "moe_validation", "int4_matmul", "bench_int4"):
        importlib.import_module(f"kernels.{name}")
    assert callable(kernels.paged_attention) and kernels.paged_attention.__module__ == "kernels"
    assert callable(kernels.store_kv) and kernels.store_kv.__module__ == "kernels"
    assert callable(kernels.int4_mm) and kernels.int4_mm.__module__ == "kernels"
    assert set(kernels.__all__) == {"paged_attention", "store_kv", "decode_num_splits", "fused_moe", "rms_norm",
                                    "add_rms_norm", "rope_", "silu_and_mul", "int4_mm"}
    for name in kernels.__all__:
        assert getattr(kernels, name).__module__ == "kernels", f"kernels.{name} is shadowed by a submodule"
