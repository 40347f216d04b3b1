"""Why engine.models.layers.linear flips the GEMM for skinny CPU batches: time x @ W^T both ways.

    .venv/bin/python scripts/bench_cpu_linear.py [--threads N]

For SmolLM2-135M's projection shapes and the LM head, and batch sizes from decode (1-128 rows) to prefill
(2048 rows), prints the median time of F.linear(x, W) and of (W @ x^T)^T, and their ratio (> 1: flipping
wins). Each call gets 30 distinct weight matrices in turn, so weights come from memory as in a real step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

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
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
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


if __name__ == "__main__":
    main()
