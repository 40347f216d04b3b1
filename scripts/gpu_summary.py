"""Print the short table that ends scripts/gpu_check.sh and write OUT_DIR/summary.json.

Reads what the check wrote: kernels.json (python -m kernels.bench) and bench-*.json (kvserve bench).
Missing files are reported as missing, never as numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def kernel_summary(kern: dict) -> dict:
    """The figures the targets are stated in, from python -m kernels.bench's rows."""
    decode = [r for r in kern.get("decode", []) if "ours_ms" in r]
    prefill = [r for r in kern.get("prefill", []) if "ours_ms" in r]
    big = [r["fraction_of_copy"] for r in decode if r["context"] >= 8192 and r["batch"] >= 32]
    speedups = [r["speedup"] for r in decode if "speedup" in r]
    long_prefill = [r["ours_TFLOPs"] for r in prefill if r["tokens"] >= 4096]
    return {
        "decode_min_fraction_of_copy_ctx8k_b32": min(big) if big else None,
        "decode_min_speedup_vs_torch": min(speedups) if speedups else None,
        "prefill_min_TFLOPs_4k_plus": min(long_prefill) if long_prefill else None,
        "kernel_results_all_ok": all(r.get("ok", True) for r in decode + prefill),
    }


def main(out_dir: str) -> int:
    out = Path(out_dir)
    rows: list[tuple[str, str, str]] = []
    summary: dict = {}
    log = out / "gpu-tests.log"
    if log.exists():
        tail = [line for line in log.read_text().splitlines() if " passed" in line or " failed" in line]
        rows.append(("GPU tests", tail[-1].strip() if tail else "no result line", ""))
        summary["gpu_tests"] = tail[-1].strip() if tail else None
    kern = load(out / "kernels.json")
    if kern is None:
        rows.append(("kernel bench", "missing", ""))
    else:
        k = kernel_summary(kern)
        summary["kernels"] = k
        rows.append(("copy bandwidth (GB/s)", f"{kern.get('copy_GBps', 0):,.0f}", ""))
        for key, target in (("decode_min_fraction_of_copy_ctx8k_b32", "target >= 0.80"),
                            ("decode_min_speedup_vs_torch", "target > 1"),
                            ("prefill_min_TFLOPs_4k_plus", "target >= 350"),
                            ("kernel_results_all_ok", "")):
            value = k.get(key)
            rows.append((f"kernels: {key}", "n/a" if value is None else f"{value:.3g}" if isinstance(value, float)
                         else str(value), target))
    for name, target in (("bench-1b", None), ("bench-8b", 5.0)):
        b = load(out / f"{name}.json")
        if b is None:
            rows.append((name, "missing", ""))
            continue
        eng, st = b.get("engine_output_tok_s"), b.get("hf_static_output_tok_s")
        ratio = eng / st if eng and st else None
        summary[name] = {"engine_output_tok_s": eng, "hf_static_output_tok_s": st, "ratio": ratio,
                         "hf_cb_output_tok_s": b.get("hf_cb_output_tok_s")}
        rows.append((f"{name}: engine tok/s", f"{eng:,.0f}" if eng else "n/a", ""))
        rows.append((f"{name}: HF static tok/s", f"{st:,.0f}" if st else "n/a", ""))
        if ratio is not None:
            rows.append((f"{name}: engine / HF static", f"{ratio:.2f}x", f"target >= {target}x" if target else ""))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "results/gpu"))
