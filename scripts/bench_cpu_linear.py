"""Why engine.models.layers.linear flips the GEMM for skinny CPU batches: time x @ W^T both ways.

    .venv/bin/python scripts/bench_cpu_linear.py [--threads N]

For SmolLM2-135M's projection shapes and the LM head, and batch sizes from decode (1-128 rows) to prefill
(2048 rows), prints the median time of F.linear(x, W) and of (W @ x^T)^T, and their ratio (> 1: flipping
wins). Each call gets 30 distinct weight matrices in turn, so weights come from memory as in a real step.

`--padding` instead times one decode step's projections (30 layers x qkv, o, gate_up, down) at 1-64 rows,
each row count against the count `engine.models.layers.gemm_rows` pads it to, interleaved in the same loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from engine.models.layers import gemm_rows

SHAPES = {"qkv_proj": (960, 576), "gate_up_proj": (3072, 576), "down_proj": (576, 1536), "lm_head": (49152, 576)}
ROWS = (1, 4, 16, 32, 64, 128, 256, 2048)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--padding", action="store_true", help="time row counts against their padded counts")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.padding:
        padding_table()
        return
    print(f"{'weight':>14} {'rows':>5} {'F.linear ms':>12} {'flipped ms':>11} {'ratio':>6}")
    for name, (n, k) in SHAPES.items():
        copies = 4 if name == "lm_head" else 30
        weights = [torch.randn(n, k) * 0.02 for _ in range(copies)]
        for m in ROWS:
            x = torch.randn(m, k)
            reps = 3 if m * n > 2**24 else 7
            a = median_ms(lambda: [F.linear(x, w) for w in weights], reps) / copies
            b = median_ms(lambda: [(w @ x.t()).t() for w in weights], reps) / copies
            print(f"{name:>14} {m:>5} {a:>12.3f} {b:>11.3f} {a / b:>6.2f}", flush=True)


def padding_table(max_rows: int = 64, repeats: int = 5) -> None:
    """Minimum over `repeats` interleaved passes: m rows as they are vs padded to gemm_rows(m)."""
    shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
    weights = [torch.randn(n, k) * 0.02 for _ in range(30) for n, k in shapes]
    counts = sorted({m for m in range(1, max_rows + 1)} | {gemm_rows(m) for m in range(1, max_rows + 1)})
    inputs = {m: {k: torch.randn(m, k) for k in (576, 1536)} for m in counts}
    best = {m: float("inf") for m in counts}
    for _ in range(repeats):
        for m in counts:
            t0 = time.perf_counter()
            for w in weights:
                (w @ inputs[m][w.shape[1]].t()).t()
            best[m] = min(best[m], time.perf_counter() - t0)
    print(f"{'rows':>5} {'ms':>7} {'padded to':>10} {'ms':>7} {'gain':>6}")
    for m in range(1, max_rows + 1):
        r = gemm_rows(m)
        print(f"{m:>5} {best[m] * 1e3:>7.1f} {r:>10} {best[r] * 1e3:>7.1f} {best[m] / best[r]:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
