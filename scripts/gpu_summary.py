"""Print the short table that ends scripts/gpu_check.sh (optionally also as JSON).

    python scripts/gpu_summary.py OUT_DIR [--json PATH]

Reads what the check wrote into OUT_DIR: stages.tsv (each stage's status), gpu-tests.log (pytest -v -rA),
kernels.json (python -m kernels.bench) and bench-*.json (kvserve bench). Anything missing, unreadable, cut
short or failed is reported as such, never as a number, and never stops the rest of the table: this runs last
in the check and must print whatever happened before it. Exit status 0 unless the table itself failed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BENCH_TARGETS = {"bench-8b": 5.0, "bench-1b": 8.0}  # engine / HF static, from issue 9
STAGES = ("bench-8b", "bench-1b", "kernels", "gpu-tests")


def load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stage_rows(out: Path) -> list[tuple[str, str, str]]:
    """One row per planned stage from stages.tsv: ok / failed / timeout / skipped / not run."""
    try:
        lines = (out / "stages.tsv").read_text().splitlines()
    except OSError:
        return [("stages", "missing", "stages.tsv not written")]
    rows, seen = [], {}
    for line in lines:
        fields = line.split("\t")
        if line.startswith("# "):
            key, _, value = line[2:].partition(": ")
            rows.append((key, value.strip()[:70], ""))
        elif len(fields) == 5 and fields[0] != "stage":
            seen[fields[0]] = fields
    for name in STAGES:
        if name not in seen:
            rows.append((f"stage {name}", "not run", ""))
            continue
        _, state, rc, seconds, timeout = seen[name]
        note = f"exit {rc}, see {name}.log" if state in ("failed", "timeout") else ""
        rows.append((f"stage {name}", f"{state} {seconds}s/{timeout}s", note))
    return rows


def pytest_summary(log: str) -> tuple[str, list[str]]:
    """(result line, failed test ids) from `pytest -v -rA` output, counting per-test lines when the final
    summary line is missing (the run was cut short)."""
    final = [line.strip("= ").strip() for line in log.splitlines()
             if re.search(r"\d+ (passed|failed|error|skipped)", line) and " in " in line]
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.M)))
    if final:
        return final[-1], failed
    counts = {word: len(re.findall(rf"::\S+ {word}", log)) for word in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    if not any(counts.values()):
        return "no test result", failed
    failed = failed or sorted(set(re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)", log, re.M)))
    return "cut short: " + ", ".join(f"{n} {w.lower()}" for w, n in counts.items()), failed


def kernel_summary(kern: dict) -> dict:
    """The figures the targets are stated in, from python -m kernels.bench's rows."""
    decode = [r for r in kern.get("decode", []) if "ours_ms" in r]
    prefill = [r for r in kern.get("prefill", []) if "ours_ms" in r]
    elementwise = [r for r in kern.get("elementwise", []) if "ours_ms" in r]
    int4 = [r for r in kern.get("int4", []) if "ours_ms" in r]
    big = [r["fraction_of_copy"] for r in decode if r["context"] >= 8192 and r["batch"] >= 32]
    speedups = [r["speedup"] for r in decode if "speedup" in r]
    long_prefill = [r["ours_TFLOPs"] for r in prefill if r["tokens"] >= 4096]
    fused = [r["speedup"] for r in elementwise]
    int4_decode = [r["speedup_vs_bf16"] for r in int4 if r["rows"] == 1]
    return {
        "decode_min_fraction_of_copy_ctx8k_b32": min(big) if big else None,
        "decode_min_speedup_vs_torch": min(speedups) if speedups else None,
        "prefill_min_TFLOPs_4k_plus": min(long_prefill) if long_prefill else None,
        "elementwise_min_speedup_vs_torch": min(fused) if fused else None,
        "int4_decode_min_speedup_vs_bf16": min(int4_decode) if int4_decode else None,
        "kernel_results_all_ok": all(r.get("ok", True) for r in decode + prefill + elementwise + int4),
        "complete": bool(kern.get("complete")),
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def summarize(out: Path) -> tuple[list[tuple[str, str, str]], dict]:
    rows: list[tuple[str, str, str]] = []
    summary: dict = {}
    for name, section in (("stages", _stages), ("GPU tests", _tests), ("kernel bench", _kernels),
                          ("engine bench", _benches)):
        try:
            section(out, rows, summary)
        except Exception as e:  # a malformed file must not cost the rest of the table
            rows.append((name, "unreadable", f"{type(e).__name__}: {e}"[:80]))
    return rows, summary


def _stages(out: Path, rows: list, summary: dict) -> None:
    rows += stage_rows(out)


def _tests(out: Path, rows: list, summary: dict) -> None:
    try:
        log = (out / "gpu-tests.log").read_text(errors="replace")
    except OSError:
        rows.append(("GPU tests", "missing", ""))
        return
    result, failed = pytest_summary(log)
    summary["gpu_tests"] = {"result": result, "failed": failed}
    rows.append(("GPU tests", result[:70], ""))
    rows += [("  failed", name[-70:], "") for name in failed[:10]]


def _kernels(out: Path, rows: list, summary: dict) -> None:
    kern = load(out / "kernels.json")
    if kern is None:
        rows.append(("kernel bench", "missing", ""))
        return
    k = summary["kernels"] = kernel_summary(kern)
    rows.append(("copy bandwidth (GB/s)", _fmt(kern.get("copy_GBps")), "" if k["complete"] else "partial run"))
    for key, target in (("decode_min_fraction_of_copy_ctx8k_b32", "target >= 0.80"),
                        ("decode_min_speedup_vs_torch", "target > 1"),
                        ("prefill_min_TFLOPs_4k_plus", "target >= 350"),
                        ("elementwise_min_speedup_vs_torch", "target > 1"),
                        ("int4_decode_min_speedup_vs_bf16", "target >= 2 (a quarter of the bytes)"),
                        ("kernel_results_all_ok", "")):
        rows.append((f"kernels: {key}", _fmt(k[key]), target))


def _benches(out: Path, rows: list, summary: dict) -> None:
    for name, target in BENCH_TARGETS.items():
        b = load(out / f"{name}.json")
        if b is None:
            rows.append((name, "missing", ""))
            continue
        eng, st = b.get("engine_output_tok_s"), b.get("hf_static_output_tok_s")
        ratio = eng / st if eng and st else None
        summary[name] = {"engine_output_tok_s": eng, "hf_static_output_tok_s": st, "ratio": ratio,
                         "complete": bool(b.get("complete"))}
        rows.append((f"{name}: engine tok/s", f"{eng:,.0f}" if eng else "n/a", "" if b.get("complete") else "partial run"))
        rows.append((f"{name}: HF static tok/s", f"{st:,.0f}" if st else "n/a", ""))
        rows.append((f"{name}: engine / HF static", f"{ratio:.2f}x" if ratio else "n/a", f"target >= {target}x"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default="results/gpu")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    rows, summary = summarize(Path(args.out_dir))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
