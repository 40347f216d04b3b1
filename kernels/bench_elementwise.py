"""Benchmark of the fused element-wise kernels against the torch ops they replace, on a CUDA GPU.

Part of `python -m kernels.bench`. Llama-3.1-8B widths (hidden 4096, 32 query / 8 KV heads of 128, MLP 14336),
bf16, token counts from a decode batch to a prefill chunk. For each: our median time, achieved bandwidth
(the fewest bytes the op must move: every input read once, every output written once) and its fraction of
the copy bandwidth, the torch path's time (the same ops as engine.models.layers' CPU path, written out here
because kernels/ must not import engine/) and the speedup. Each output is checked against the torch path.
"""

from __future__ import annotations

import torch

HIDDEN, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, INTERMEDIATE = 4096, 32, 8, 128, 14336
TOKENS = (16, 256, 2048, 8192)
DTYPE = torch.bfloat16
BYTES_FORMULA = ("element-wise bytes: rms_norm 2*T*N*e (+2*T*N*e for the residual add), "
                 "rope 2*T*(H+KVH)*D*e + 2*T*D/2*e, silu_and_mul 3*T*I*e")


def torch_rms_norm(x, weight, eps, delta=None):
    if delta is not None:
        x.add_(delta)
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype).mul_(weight)


def torch_rope(q, k, cos, sin):
    out = []
    for x in (q, k):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out.append(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))
    return out


def torch_silu_and_mul(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate).mul_(up)


def _cases(tokens: int):
    """(name, bytes moved, ours, torch, check) per op; check(ours_out, torch_out) -> max abs error."""
    import kernels

    dev, e = "cuda", 2
    x = torch.randn(tokens, HIDDEN, dtype=DTYPE, device=dev)
    delta = torch.randn(tokens, HIDDEN, dtype=DTYPE, device=dev)
    weight = torch.rand(HIDDEN, dtype=DTYPE, device=dev) + 0.5
    qkv = torch.randn(tokens, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, dtype=DTYPE, device=dev)
    q = qkv[:, :NUM_HEADS * HEAD_DIM].view(tokens, NUM_HEADS, HEAD_DIM)
    k = qkv[:, NUM_HEADS * HEAD_DIM:(NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM].view(tokens, NUM_KV_HEADS, HEAD_DIM)
    angles = torch.rand(tokens, 1, HEAD_DIM // 2, device=dev) * 6
    cos, sin = angles.cos().to(DTYPE), angles.sin().to(DTYPE)
    gate_up = torch.randn(tokens, 2 * INTERMEDIATE, dtype=DTYPE, device=dev)
    def rope_pair():
        q0, k0 = q.clone(), k.clone()
        want = torch_rope(q0, k0, cos, sin)
        kernels.rope_(q0, k0, cos, sin)
        return torch.cat([q0.flatten(), k0.flatten()]), torch.cat([w.flatten() for w in want])

    # In-place ops run on the same buffers every repeat: RMSNorm's residual add drifts (harmless for timing),
    # RoPE rotates q/k again (a rotation keeps magnitudes). Correctness is checked on fresh copies first.
    return [
        ("rms_norm", 2 * tokens * HIDDEN * e,
         lambda: kernels.rms_norm(x, weight, 1e-5), lambda: torch_rms_norm(x, weight, 1e-5), None),
        ("add_rms_norm", 4 * tokens * HIDDEN * e,
         lambda: kernels.add_rms_norm(x, delta, weight, 1e-5), lambda: torch_rms_norm(x, weight, 1e-5, delta),
         lambda: (kernels.add_rms_norm(x.clone(), delta, weight, 1e-5),
                  torch_rms_norm(x.clone(), weight, 1e-5, delta))),
        ("rope", 2 * tokens * (NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM * e + 2 * tokens * HEAD_DIM // 2 * e,
         lambda: kernels.rope_(q, k, cos, sin), lambda: torch_rope(q, k, cos, sin), rope_pair),
        ("silu_and_mul", 3 * tokens * INTERMEDIATE * e,
         lambda: kernels.silu_and_mul(gate_up), lambda: torch_silu_and_mul(gate_up), None),
    ]


def bench_elementwise(tokens: int, copy_bw: float, median_ms) -> list[dict]:
    """One row per op at this token count; `median_ms(fn)` times fn (kernels.bench's do_bench median)."""
    rows = []
    for name, moved, ours, theirs, paired in _cases(tokens):
        a, b = paired() if paired is not None else (ours(), theirs())
        error = float((a.float() - b.float()).abs().max())
        ours_ms, torch_ms = median_ms(ours), median_ms(theirs)
        rows.append(dict(op=name, tokens=tokens, bytes=moved, ours_ms=ours_ms, ours_GBps=moved / ours_ms / 1e6,
                         fraction_of_copy=moved / (ours_ms / 1e3) / copy_bw, torch_ms=torch_ms,
                         speedup=torch_ms / ours_ms, max_abs_error=error,
                         ok=error == 0.0 if name == "rope" else error <= 3e-2))
    return rows


def format_rows(rows: list[dict]) -> list[str]:
    lines = [BYTES_FORMULA, f"{'op':<13} {'tokens':>6} {'ours ms':>8} {'GB/s':>7} {'%copy':>6} {'torch ms':>9} "
                            f"{'speedup':>7} {'ok':>3}"]
    for r in rows:
        lines.append(f"{r['op']:<13} {r['tokens']:>6} {r['ours_ms']:8.4f} {r['ours_GBps']:7.0f} "
                     f"{100 * r['fraction_of_copy']:5.1f}% {r['torch_ms']:9.4f} {r['speedup']:7.2f} {str(r['ok']):>3}")
    return lines
