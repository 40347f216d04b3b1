"""`kvserve bench --plot roofline.png`: run the engine at several batch sizes and draw every step on the roofline.

Each sweep run starts `batch` prompts at once (the same input and output length), so its decode steps run
`batch` sequences together: as the batch grows, a decode step reads the same weights for more tokens and its
arithmetic intensity (FLOP per byte moved) climbs towards the ridge, while prefill steps sit far to the right.
The roof is the peak the bench was given (or measured); points are the engine's own per-step FLOPs and bytes
(`IterationStats.cost`, engine/roofline.py) over each step's wall time.
"""

from __future__ import annotations

from ..roofline import Peak
from .step_summary import StepPoint, step_points

KIND_COLOURS = {"prefill": "#e07b39", "decode": "#2a9d8f", "mixed": "#9b5de5"}


def sweep(engine_run, batch_sizes: list[int], input_len: int, output_len: int, seed: int,
          vocab_size: int) -> dict[int, list[StepPoint]]:
    from .bench import make_workload

    out = {}
    for b in batch_sizes:
        if b < 1:
            raise ValueError(f"sweep_batch_sizes: must be >= 1, got {b}")
        wl = make_workload(b, str(input_len), str(output_len), seed + b, vocab_size)
        engine_run.run(wl)
        out[b] = step_points(engine_run.last_stats, batch=b)
    return out


def plot_roofline(points: dict[int, list[StepPoint]], peak: Peak | None, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.6), dpi=130)
    every = [p for ps in points.values() for p in ps if p.flops_per_s > 0 and p.intensity > 0]
    xs = [p.intensity for p in every]
    x0, x1 = min(xs + [peak.ridge / 100 if peak else 0.1]) / 2, max(xs + [peak.ridge * 10 if peak else 100]) * 2
    if peak is not None:
        ridge = peak.ridge
        ax.plot([x0, ridge, x1], [x0 * peak.bandwidth, peak.flops, peak.flops], color="#264653", lw=2,
                label=f"roofline: {peak.flops / 1e9:,.1f} GFLOP/s, {peak.bandwidth / 1e9:,.1f} GB/s")
        ax.axvline(ridge, color="#264653", ls=":", lw=1)
        ax.annotate(f"ridge {ridge:.1f} FLOP/B", (ridge, peak.flops), textcoords="offset points", xytext=(6, -14),
                    fontsize=8, color="#264653")
    for kind, colour in KIND_COLOURS.items():
        ks = [p for p in every if p.kind == kind]
        if ks:
            ax.scatter([p.intensity for p in ks], [p.flops_per_s for p in ks], s=18, alpha=0.75, color=colour,
                       edgecolors="none", label=f"{kind} steps ({len(ks)})")
    for b, ps in points.items():  # label each batch size's decode cluster
        ds = [p for p in ps if p.kind == "decode" and p.flops_per_s > 0]
        if ds:
            mid = sorted(ds, key=lambda p: p.flops_per_s)[len(ds) // 2]
            ax.annotate(f"batch {b}", (mid.intensity, mid.flops_per_s), textcoords="offset points", xytext=(5, 6),
                        fontsize=8, color=KIND_COLOURS["decode"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x0, x1)
    ax.set_xlabel("arithmetic intensity (model FLOPs per byte moved)")
    ax.set_ylabel("achieved FLOP/s (model FLOPs / step wall time)")
    ax.set_title(("Every engine step on the roofline" + (f": {title}" if title else "")), fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
