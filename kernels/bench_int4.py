"""Benchmark of the weight-only int4 GEMM (kernels.int4_mm) against bf16 weights, on a CUDA GPU.

Part of `python -m kernels.bench`. Llama-3.1-8B's projections (fused qkv 6144 x 4096, o 4096 x 4096, fused
gate_up 28672 x 4096, down 4096 x 14336), group size 128, bf16 activations, a few batch sizes. For each: our
median time, achieved bandwidth (the int4 weight bytes, scales and zeros, x and y, each moved once) and its
fraction of the copy bandwidth, the bf16 GEMM's time on the same weights dequantized (torch.nn.functional.linear,
cuBLAS) and our speedup over it (a decode step's per-layer win); the full sweep also times the engine's prefill
path (dequantize the whole weight, then the bf16 GEMM), to place Int4Linear's kernel row threshold. Each
output is checked against the bf16 GEMM over the dequantized weights.
"""

from __future__ import annotations

import torch

PROJECTIONS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
GROUP_SIZE = 128
DTYPE = torch.bfloat16
QUICK = (("o", "gate_up"), (1, 16))
FULL = (tuple(PROJECTIONS), (1, 8, 16, 32, 64, 128))
BYTES_FORMULA = "int4 bytes = N*K/2 (codes) + 4*N*K/g (bf16 scale, zero) + 2*M*K (x) + 2*M*N (y)"
MAX_REL_ERROR = 2e-2  # max |ours - bf16 GEMM| / max |bf16 GEMM|


def int4_bytes(m: int, n: int, k: int, group_size: int) -> int:
    return n * k // 2 + 4 * n * (k // group_size) + 2 * m * k + 2 * m * n


def _weights(n: int, k: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight uint8 [N, K/2], scales_and_zeros bf16 [N, K/g, 2], the dequantized bf16 weight [N, K])."""
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device=device)
    scale = (torch.rand(n, k // GROUP_SIZE, device=device) + 0.5) / (4 * k ** 0.5)
    zero = torch.randn(n, k // GROUP_SIZE, device=device) * 0.02
    sz = torch.stack([scale, zero], dim=-1).to(DTYPE)
    w = dequantize(codes, sz)
    return (codes[:, 0::2] << 4) | codes[:, 1::2], sz, w


def dequantize(codes: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    n, k = codes.shape
    g = codes.view(n, k // GROUP_SIZE, GROUP_SIZE).to(DTYPE).sub_(8)
    return g.mul_(sz[..., 0:1]).add_(sz[..., 1:2]).view(n, k)


def unpack_dequantize(qweight: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """The engine's prefill path before its GEMM: unpack the codes, dequantize into bf16."""
    codes = torch.stack([qweight >> 4, qweight & 15], dim=-1).view(qweight.shape[0], -1)
    return dequantize(codes, sz)


def bench_int4(copy_bw: float, median_ms, quick: bool) -> list[dict]:
    """One row per (projection, batch size); `median_ms(fn)` times fn (kernels.bench's do_bench median)."""
    import kernels

    names, batches = QUICK if quick else FULL
    F = torch.nn.functional
    rows = []
    for name in names:
        n, k = PROJECTIONS[name]
        qweight, sz, w = _weights(n, k, "cuda")
        for m in batches:
            x = torch.randn(m, k, dtype=DTYPE, device="cuda")
            want = F.linear(x, w)
            error = float((kernels.int4_mm(x, qweight, sz, GROUP_SIZE).float() - want.float()).abs().max())
            moved = int4_bytes(m, n, k, GROUP_SIZE)
            ours_ms = median_ms(lambda: kernels.int4_mm(x, qweight, sz, GROUP_SIZE))
            bf16_ms = median_ms(lambda: F.linear(x, w))
            row = dict(proj=name, n=n, k=k, rows=m, bytes=moved, ours_ms=ours_ms, ours_GBps=moved / ours_ms / 1e6,
                       fraction_of_copy=moved / (ours_ms / 1e3) / copy_bw, bf16_ms=bf16_ms,
                       speedup_vs_bf16=bf16_ms / ours_ms, max_rel_error=error / float(want.abs().max()))
            if not quick:
                dequant_ms = median_ms(lambda: F.linear(x, unpack_dequantize(qweight, sz)))
                row.update(dequant_gemm_ms=dequant_ms, speedup_vs_dequant_gemm=dequant_ms / ours_ms)
            row["ok"] = row["max_rel_error"] <= MAX_REL_ERROR
            rows.append(row)
        del qweight, sz, w
        torch.cuda.empty_cache()
    return rows


def format_rows(rows: list[dict]) -> list[str]:
    lines = [BYTES_FORMULA, f"{'int4 proj':<9} {'rows':>4} {'ours ms':>8} {'GB/s':>7} {'%copy':>6} {'bf16 ms':>8} "
                            f"{'vs bf16':>7} {'vs deq':>6} {'ok':>3}"]
    for r in rows:
        deq = f"{r['speedup_vs_dequant_gemm']:6.2f}" if "speedup_vs_dequant_gemm" in r else f"{'-':>6}"
        lines.append(f"{r['proj']:<9} {r['rows']:>4} {r['ours_ms']:8.4f} {r['ours_GBps']:7.0f} "
                     f"{100 * r['fraction_of_copy']:5.1f}% {r['bf16_ms']:8.4f} {r['speedup_vs_bf16']:7.2f} {deq} "
                     f"{str(r['ok']):>3}")
    return lines
