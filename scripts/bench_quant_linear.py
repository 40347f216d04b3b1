"""One SmolLM2-sized projection (3072 x 576, gate/up) at several row counts: fp32 GEMM vs PyTorch's int8 and int4
weight-only CPU kernels vs int8 dequantize + GEMM vs GGUF Q8_0's grouped int8 (32 columns a scale: no
library kernel, dequantize + GEMM), alternating rounds, best of 5 (ratios are what matter).

    .venv/bin/python scripts/bench_quant_linear.py [--rows 1,4,12,512]
"""

from __future__ import annotations

import argparse
import time

import torch

from engine.models.layers import linear
from engine.quantization.int4 import Int4Linear
from engine.quantization.int8 import Int8Linear
from engine.quantization.int8_grouped import GroupedInt8Linear


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,4,12,512")
    args = p.parse_args()
    w = torch.randn(3072, 576) * 0.05
    l8, l4 = Int8Linear(w, None), Int4Linear(w, None, 64)
    group_scale = w.view(3072, -1, 32).abs().amax(-1) / 127  # Q8_0's layout: one scale per 32 columns
    codes = torch.round(w.view(3072, -1, 32) / group_scale[..., None]).to(torch.int8).view(3072, 576)
    q8 = GroupedInt8Linear(codes, group_scale, None, torch.float32, torch.device("cpu"))
    for m in (int(r) for r in args.rows.split(",")):
        x = torch.randn(m, 576)
        fns = {"fp32": lambda: linear(x, w),
               "int8-kernel": lambda: torch.ops.aten._weight_int8pack_mm(x, l8.qweight, l8.scale),
               "int4-kernel": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, l4.qweight, 64, l4.scales_and_zeros),
               "int8-dequant-gemm": lambda: linear(x, l8.qweight.to(x.dtype).mul_(l8.scale[:, None])),
               "q8_0-grouped": lambda: q8(x)}
        reps = 10 if m < 64 else 1
        best = {k: float("inf") for k in fns}
        for _ in range(5):
            for k, f in fns.items():
                t = time.perf_counter()
                for _ in range(reps):
                    f()
                best[k] = min(best[k], (time.perf_counter() - t) / reps)
        print(f"rows {m:4d}: " + "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in best.items()), flush=True)


if __name__ == "__main__":
    main()
