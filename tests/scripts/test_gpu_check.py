"""scripts/gpu_check.sh's structure, without a GPU: the stage plan and its 7-minute budget (DRY_RUN=1), and a
real run of the script with a stand-in python whose stages crash, hang and succeed: every stage is logged to
its own file, a hung stage is killed at the deadline, later ones are skipped, and the summary comes last."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def dry_run(out_dir: Path) -> str:
    result = subprocess.run(["bash", str(SCRIPT), str(out_dir)], env={**os.environ, "DRY_RUN": "1"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_plan_runs_the_benchmarks_first_then_bounded_tests_within_seven_minutes(tmp_path):
    out = dry_run(tmp_path)
    stages = re.findall(r"^stage (\S+) timeout (\d+)s: (.*)$", out, re.M)
    assert [name for name, _, _ in stages] == ["env", "bench-8b", "bench-1b", "kernels", "gpu-tests", "summary"]
    kill = int(re.search(r"kill grace (\d+)s per stage", out).group(1))
    # every stage's timeout plus its kill grace, the summary's own time included, fits the 420 s deadline
    total = sum(int(t) for _, t, _ in stages) + kill * (len(stages) - 1)
    assert total <= 420
    assert f"budget: {total}s of 420s" in out
    commands = {name: cmd for name, _, cmd in stages}
    for bench, shape in (("bench-8b", "llama-3.1-8b"), ("bench-1b", "llama-3.2-1b")):
        cmd = commands[bench]
        assert f"--model-config {shape}" in cmd and "--max-model-len 768" in cmd and "--load-format dummy" in cmd
        assert "--num-prompts 256 --input-len 512 --output-len 256" in cmd
        assert f"--json {tmp_path}/{bench}.json" in cmd
    assert f"kernels.bench --quick --json {tmp_path}/kernels.json" in commands["kernels"]
    tests = commands["gpu-tests"]
    assert "-m gpu" in tests and "-rA" in tests and "--durations=20" in tests and " -x" not in tests
    assert "HF_HUB_OFFLINE=1" in out


STAND_IN_PYTHON = """#!/usr/bin/env bash
# Plays python3 for gpu_check.sh: the 8B bench crashes, the 1B bench succeeds, the kernel bench hangs.
args="$*"
case "$args" in
  *gpu_summary.py*) exec "{real_python}" "$@" ;;
  -c*) echo "torch 9.9 cuda none triton 9.9 transformers 9.9" ;;
  *llama-3.1-8b*) echo "Traceback (most recent call last):"; echo "RuntimeError: boom" >&2; exit 1 ;;
  *llama-3.2-1b*)
    json=${{args##*--json }}
    printf '{{"engine_output_tok_s": 9000.0, "hf_static_output_tok_s": 1800.0, "complete": true}}' > "$json" ;;
  *kernels.bench*) echo "measuring..."; sleep 60 ;;
  *) echo "unexpected: $args"; exit 3 ;;
esac
"""


def test_a_run_with_crashing_and_hanging_stages_keeps_every_log_and_ends_with_the_summary(tmp_path):
    import sys

    python = tmp_path / "python"
    python.write_text(STAND_IN_PYTHON.format(real_python=sys.executable))
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(python), "GPU_CHECK_DEADLINE_S": "10", "GPU_CHECK_SUMMARY_S": "4",
           "GPU_CHECK_KILL_S": "1", "GPU_CHECK_MIN_STAGE_S": "2"}
    t0 = time.monotonic()
    result = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert result.returncode == 1  # some stage did not pass
    assert elapsed < 10 + 3, f"took {elapsed:.1f}s against a 10 s deadline"

    rows = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines() if not line.startswith("#")]
    status = {r[0]: (r[1], r[2]) for r in rows[1:]}
    assert status == {"bench-8b": ("failed", "1"), "bench-1b": ("ok", "0"), "kernels": ("timeout", "124"),
                      "gpu-tests": ("skipped", "-")}
    assert "RuntimeError: boom" in (out / "bench-8b.log").read_text()  # stderr is kept in the stage's log
    assert "measuring..." in (out / "kernels.log").read_text()
    assert "skipped" in (out / "gpu-tests.log").read_text()
    assert len(list(out.iterdir())) <= 8  # what a device run brings back

    lines = result.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("=== "))
    assert lines[start].startswith("=== summary")  # the last thing printed
    text = "\n".join(lines[start:])
    assert re.search(r"stage bench-8b\s+failed", text) and re.search(r"stage kernels\s+timeout", text)
    assert re.search(r"stage gpu-tests\s+skipped", text)
    assert re.search(r"bench-1b: engine / HF static\s+5.00x\s+target >= 8.0x", text)
    assert re.search(r"bench-8b\s+missing", text) and re.search(r"kernel bench\s+missing", text)
    assert "9.9" in text  # the environment line
