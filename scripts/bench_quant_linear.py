"""SmolLM2-135M's 120 decoder projections (30 layers x q/k/v, o, gate/up, down, distinct weights so that they
come from memory, not the cache, as in a decode step) through each CPU matmul path, at several row counts:
the fp32 GEMM, PyTorch's int8 and int4 weight-only kernels fed fp32 or bf16 activations, and int8
dequantize + GEMM, and GGUF Q8_0's grouped int8 (a scale per 32 columns: no library kernel, so dequantize +
GEMM, `engine/quantization/int8_grouped.py`), and W8A8 (int8 activations per token too, PyTorch's dynamic int8
GEMM: `engine/quantization/w8a8.py`), and kvserve's C kernels for int8 weights (kernels/cpu/decode_step.c:
float32 activations, and W8A8's; skipped without a C compiler). One thread, thread CPU time (a busy shared machine inflates it less than wall time),
configurations alternating round by round, medians; ratios are what matter.

    .venv/bin/python scripts/bench_quant_linear.py [--rows 1,4,16,32,64] [--rounds 5] [--layers 30]
        [--paths "w8a8 (dynamic int8 GEMM),w8a8 C kernel"] [--threads 2]

`--paths` keeps the named columns only (prefill-sized rows take minutes on the slow paths); `--threads N > 1`
times wall clock instead (thread CPU time counts one thread's share).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.models.layers import linear
from engine.quantization.int4 import Int4Linear
from engine.quantization.int8 import Int8Linear
from engine.quantization.int8_grouped import GroupedInt8Linear
from engine.quantization.w8a8 import W8A8Linear

HIDDEN, INTERMEDIATE, QKV = 576, 1536, 960  # SmolLM2-135M


def paths(w: torch.Tensor, kernel) -> dict:
    """name -> fn(x) for one projection weight w [N, K] (`kernel`: the C kernels, or None)."""
    l8, l4 = Int8Linear(w, None), Int4Linear(w, None, 64)
    s8, sz4 = l8.scale.float(), l4.scales_and_zeros.float()
    n, k = w.shape
    group_scale = w.view(n, -1, 32).abs().amax(-1) / 127  # GGUF Q8_0's layout: one scale per 32 columns
    codes = torch.round(w.view(n, -1, 32) / group_scale[..., None]).to(torch.int8).view(n, k)
    q8 = GroupedInt8Linear(codes, group_scale, None, torch.float32, torch.device("cpu"))
    w8a8 = W8A8Linear(w, None)
    fns = {
        "fp32 GEMM": lambda x: linear(x, w),
        "int8 kernel, fp32 in": lambda x: torch.ops.aten._weight_int8pack_mm(x, l8.qweight, s8),
        "int8 kernel, bf16 in": lambda x: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), l8.qweight, l8.scale).float(),
        "int4 kernel, fp32 in": lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, l4.qweight, 64, sz4),
        "int4 kernel, bf16 in": lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.bfloat16(), l4.qweight, 64, l4.scales_and_zeros).float(),
        "int8 dequant + GEMM": lambda x: linear(x, l8.qweight.float().mul_(s8[:, None])),
        "int4 dequant + GEMM": lambda x: linear(x, l4._dequantized_cpu(x.dtype)),
        "Q8_0 grouped int8 (dequant + GEMM)": lambda x: q8(x),
        "w8a8 (dynamic int8 GEMM)": lambda x: w8a8(x),  # no C kernel given to this one: fbgemm at every size
    }
    if kernel is not None:
        c8a8 = W8A8Linear(w, None)
        c8a8.use_cpu_kernel(kernel)
        fns["int8 C kernel, fp32 in"] = lambda x: kernel.int8_linear(x, l8.qweight, s8)
        fns["w8a8 C kernel"] = lambda x: kernel.w8a8_linear(x, c8a8.qweight, c8a8.scale_f32, c8a8.wsum)
    return fns


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,4,16,32,64")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--paths", default=None, help="comma-separated column names to time (default: all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    g = torch.Generator().manual_seed(0)
    shapes = [(QKV, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)] * args.layers
    try:
        from kernels.cpu import load_decode_step, load_paged_decode

        kernel = load_decode_step(load_paged_decode())
    except Exception as e:  # CpuKernelUnavailable: no compiler
        print(f"no C kernels: {e}")
        kernel = None
    projections = [paths(torch.randn(n, k, generator=g) * 0.05, kernel) for n, k in shapes]
    names = list(projections[0])
    if args.paths:  # names contain commas ("int8 kernel, bf16 in"): pieces join until they form a name
        wanted, piece = [], ""
        for part in args.paths.split(","):
            piece = f"{piece},{part}" if piece else part
            if piece.strip() in names:
                wanted.append(piece.strip())
                piece = ""
        if piece or not wanted:
            raise SystemExit(f"--paths: {piece or args.paths!r} is not a path; the paths are {names}")
        names = wanted
    what = "thread CPU time" if args.threads == 1 else f"wall time on {args.threads} threads"
    print(f"{len(shapes)} projections, ms of {what} per pass (median of {args.rounds}):")
    print(f"{'rows':>5} " + " ".join(f"{n:>22}" for n in names))
    for m in (int(r) for r in args.rows.split(",")):
        inputs = {k: torch.randn(m, k, generator=g) for k in (HIDDEN, INTERMEDIATE)}
        samples: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                t = clock()
                for (_, k), fns in zip(shapes, projections):
                    fns[n](inputs[k])
                samples[n].append((clock() - t) * 1e3)
        print(f"{m:>5} " + " ".join(f"{statistics.median(samples[n]):>22.1f}" for n in names), flush=True)


if __name__ == "__main__":
    main()
