"""scripts/gpu_summary.py turns what the GPU check wrote into the figures the targets are stated in, and
reports anything missing, cut short, failed or malformed as such, never as a number, without stopping."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "scripts" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KERNELS = {
    "copy_GBps": 4260.0, "complete": True,
    "decode": [
        {"batch": 32, "context": 8192, "ours_ms": 1.0, "fraction_of_copy": 0.84, "speedup": 3.0, "ok": True},
        {"batch": 128, "context": 32768, "ours_ms": 9.0, "fraction_of_copy": 0.81, "speedup": 2.5, "ok": True},
        {"batch": 1, "context": 512, "ours_ms": 0.01, "fraction_of_copy": 0.05, "speedup": 1.4, "ok": True},
        {"batch": 128, "context": 32768, "skipped": "needs 40 GiB"},
    ],
    "prefill": [{"tokens": 2048, "ours_ms": 1.0, "ours_TFLOPs": 300.0, "ok": True},
                {"tokens": 8192, "ours_ms": 5.0, "ours_TFLOPs": 420.0, "ok": False}],
    "elementwise": [{"op": "rope", "tokens": 16, "ours_ms": 0.01, "speedup": 2.0, "ok": True},
                    {"op": "silu_and_mul", "tokens": 2048, "ours_ms": 0.05, "speedup": 1.5, "ok": True}],
    "int4": [{"proj": "o", "rows": 1, "ours_ms": 0.01, "speedup_vs_bf16": 3.1, "ok": True},
             {"proj": "gate_up", "rows": 1, "ours_ms": 0.03, "speedup_vs_bf16": 2.6, "ok": True},
             {"proj": "gate_up", "rows": 16, "ours_ms": 0.04, "speedup_vs_bf16": 1.9, "ok": True}],
}


def test_summary_reports_targets_and_marks_missing_files(tmp_path, capsys):
    (tmp_path / "kernels.json").write_text(json.dumps(KERNELS))
    (tmp_path / "bench-8b.json").write_text(json.dumps({"engine_output_tok_s": 8000.0,
                                                        "hf_static_output_tok_s": 1600.0, "complete": True}))
    assert load_summary_module().main([str(tmp_path), "--json", str(tmp_path / "summary.json")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["kernels"] == {"decode_min_fraction_of_copy_ctx8k_b32": 0.81, "decode_min_speedup_vs_torch": 1.4,
                                  "prefill_min_TFLOPs_4k_plus": 420.0, "elementwise_min_speedup_vs_torch": 1.5,
                                  "int4_decode_min_speedup_vs_bf16": 2.6, "kernel_results_all_ok": False,
                                  "complete": True}
    assert summary["bench-8b"]["ratio"] == 5.0
    printed = capsys.readouterr().out
    assert re.search(r"bench-1b\s+missing", printed) and re.search(r"GPU tests\s+missing", printed)
    assert re.search(r"stages\s+missing", printed)
    assert re.search(r"bench-8b: engine / HF static\s+5.00x\s+target >= 5.0x", printed)


def test_without_json_flag_nothing_is_written_next_to_the_results(tmp_path):
    load_summary_module().main([str(tmp_path)])
    assert list(tmp_path.iterdir()) == []  # the check's folder keeps to what a device run brings back


def test_stage_statuses_and_a_cut_short_test_log_are_reported(tmp_path, capsys):
    (tmp_path / "stages.tsv").write_text(
        "# gpu: NVIDIA H200, 143771 MiB, 570.1\nstage\tstatus\trc\tseconds\ttimeout\n"
        "bench-8b\tok\t0\t120\t150\nbench-1b\ttimeout\t124\t80\t80\nkernels\tfailed\t1\t3\t60\n")
    (tmp_path / "gpu-tests.log").write_text(
        "tests/kernels/test_gpu.py::test_a PASSED\ntests/kernels/test_gpu.py::test_b FAILED\n"
        "tests/engine/test_gpu_engine.py::test_c[llama] PASSED\n")  # killed before pytest's summary
    (tmp_path / "bench-1b.json").write_text(json.dumps({"engine_output_tok_s": 9000.0}))  # engine only
    load_summary_module().main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert re.search(r"gpu\s+NVIDIA H200, 143771 MiB", printed)
    assert re.search(r"stage bench-8b\s+ok 120s/150s", printed)
    assert re.search(r"stage bench-1b\s+timeout 80s/80s\s+exit 124, see bench-1b.log", printed)
    assert re.search(r"stage kernels\s+failed 3s/60s", printed)
    assert re.search(r"stage gpu-tests\s+not run", printed)
    assert "cut short: 2 passed, 1 failed, 0 error, 0 skipped" in printed
    assert re.search(r"failed\s+tests/kernels/test_gpu.py::test_b", printed)
    assert re.search(r"bench-1b: engine tok/s\s+9,000\s+partial run", printed)
    assert re.search(r"bench-1b: engine / HF static\s+n/a", printed)


def test_a_complete_pytest_log_gives_its_own_result_line_and_failures(tmp_path, capsys):
    (tmp_path / "gpu-tests.log").write_text(
        "tests/a.py::t1 PASSED\n=========== short test summary info ===========\nPASSED tests/a.py::t1\n"
        "FAILED tests/a.py::t2 - AssertionError\n====== 1 failed, 1 passed in 42.0s ======\n")
    load_summary_module().main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert re.search(r"GPU tests\s+1 failed, 1 passed in 42.0s", printed)
    assert re.search(r"failed\s+tests/a.py::t2", printed)


def test_malformed_files_are_reported_and_the_rest_of_the_table_still_prints(tmp_path, capsys):
    (tmp_path / "kernels.json").write_text(json.dumps({"decode": [{"ours_ms": 1.0}]}))  # rows without shapes
    (tmp_path / "bench-8b.json").write_text("{not json")
    (tmp_path / "bench-1b.json").write_text(json.dumps({"engine_output_tok_s": 9000.0,
                                                        "hf_static_output_tok_s": 1000.0, "complete": True}))
    assert load_summary_module().main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"kernel bench\s+unreadable\s+KeyError", printed)
    assert re.search(r"bench-8b\s+missing", printed)
    assert re.search(r"bench-1b: engine / HF static\s+9.00x", printed)
