"""scripts/gpu_summary.py turns the GPU check's JSON files into the figures the targets are stated in."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_reports_targets_and_marks_missing_files(tmp_path, capsys):
    (tmp_path / "kernels.json").write_text(json.dumps({
        "copy_GBps": 4260.0,
        "decode": [
            {"batch": 32, "context": 8192, "ours_ms": 1.0, "fraction_of_copy": 0.84, "speedup": 3.0, "ok": True},
            {"batch": 128, "context": 32768, "ours_ms": 9.0, "fraction_of_copy": 0.81, "speedup": 2.5, "ok": True},
            {"batch": 1, "context": 512, "ours_ms": 0.01, "fraction_of_copy": 0.05, "speedup": 1.4, "ok": True},
            {"batch": 128, "context": 32768, "skipped": "needs 40 GiB"},
        ],
        "prefill": [{"tokens": 2048, "ours_ms": 1.0, "ours_TFLOPs": 300.0, "ok": True},
                    {"tokens": 8192, "ours_ms": 5.0, "ours_TFLOPs": 420.0, "ok": False}],
    }))
    (tmp_path / "bench-8b.json").write_text(json.dumps({"engine_output_tok_s": 8000.0,
                                                        "hf_static_output_tok_s": 1600.0}))
    assert load_summary_module().main(str(tmp_path)) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["kernels"] == {"decode_min_fraction_of_copy_ctx8k_b32": 0.81, "decode_min_speedup_vs_torch": 1.4,
                                  "prefill_min_TFLOPs_4k_plus": 420.0, "kernel_results_all_ok": False}
    assert summary["bench-8b"]["ratio"] == 5.0
    printed = capsys.readouterr().out
    assert "bench-1b" in printed and "missing" in printed
    assert "5.00x" in printed
