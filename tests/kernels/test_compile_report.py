"""The kernels compile for Hopper (sm_90) as the launchers configure them: within shared memory, without
register spills, K/V loads pipelined, and the varlen kernel's tl.dot on wgmma; the fused element-wise kernels
without spills too; the int4 GEMM's weight loads pipelined, its 64-row tile on wgmma. Runs the ahead-of-time compiler
in a subprocess (this process runs triton as the interpreter); no GPU needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_configurations_compile_for_hopper_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO_ROOT), TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-m", "kernels.compile_report", "--quick", "--json",
                             str(tmp_path / "report.json")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = {}
    for r in json.loads((tmp_path / "report.json").read_text()):
        split = r["kernel"] == "decode_kernel" and "splits=8" in r["config"]
        reports[r["kernel"] + ("/split" if split else "")] = r
    assert set(reports) == {"unified_attention_kernel", "decode_kernel", "decode_kernel/split",
                            "reduce_splits_kernel", "store_kv_kernel", "rms_norm_kernel", "rope_kernel",
                            "silu_and_mul_kernel", "fused_moe_kernel", "int4_matmul_kernel"}
    rows = json.loads((tmp_path / "report.json").read_text())
    assert [r["config"] for r in rows if r["kernel"] == "rms_norm_kernel"] == [
        "bf16 rms_norm N=4096", "bf16 add_rms_norm N=4096", "bf16 rms_norm per head D=128"]
    for r in rows:  # every configuration, the three RMSNorm variants included
        assert r["fits"] and r["spill_bytes"] in (0, None), f"{r['kernel']} {r['config']}: {r}"
    for name, r in reports.items():
        assert r["fits"], f"{name}: {r['shared_bytes']} bytes of shared memory"
        assert r["spill_bytes"] in (0, None), f"{name}: spills {r['spill_bytes']} bytes"
    for name in ("unified_attention_kernel", "decode_kernel", "decode_kernel/split", "fused_moe_kernel"):
        assert reports[name]["async_loads"], f"{name}: K/V loads are not pipelined"
    assert reports["unified_attention_kernel"]["wgmma"]
    int4 = {r["config"]: r for r in rows if r["kernel"] == "int4_matmul_kernel"}
    assert list(int4) == ["bf16 K=4096 g=128 rows=1 tiles=16x64x128 split-K",
                          "bf16 K=4096 g=128 rows=64 tiles=64x64x128"]
    assert all(r["async_loads"] for r in int4.values()), int4
    assert int4["bf16 K=4096 g=128 rows=64 tiles=64x64x128"]["wgmma"]
