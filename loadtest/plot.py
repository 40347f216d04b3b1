"""`--plot FILE.png`: the TTFT and TPOT distributions of a run, or a sweep's latency-throughput curve.

Uses matplotlib's Agg backend (no display needed), selected without touching global state.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from loadtest.runner import LoadResult
from loadtest.stats import Summary
from loadtest.sweep import SweepResult


def _histogram(ax, values_ms: list[float], summary: Summary, title: str, color: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("ms")
    ax.set_ylabel("requests")
    if not values_ms:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    ax.hist(values_ms, bins=min(40, max(5, len(values_ms) // 3)), color=color, alpha=0.8)
    for name, v, style in (("median", summary.median, "-"), ("p99", summary.p99, "--")):
        if v is not None:
            ax.axvline(v, color="black", linestyle=style, linewidth=1, label=f"{name} {v:,.1f} ms")
    ax.legend(loc="upper right", fontsize=8)


def plot_run(result: LoadResult, path: str | Path) -> None:
    done = [r for r in result.records if r.ok]
    ttft = [r.ttft_s * 1e3 for r in done if r.ttft_s is not None]
    tpot = [r.tpot_s * 1e3 for r in done if r.tpot_s is not None]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    s = result.stats
    _histogram(ax1, ttft, s.ttft_ms, "Time to first token (TTFT)", "tab:blue")
    _histogram(ax2, tpot, s.tpot_ms, "Time per output token (TPOT)", "tab:orange")
    fig.suptitle(f"{result.model}: {s.completed} completed, {s.failed} failed, "
                 f"{s.request_throughput:.2f} req/s, {s.output_throughput:,.0f} output tok/s")
    fig.savefig(path, dpi=110)


def plot_sweep(sweep: SweepResult, path: str | Path) -> None:
    xs = [p.stats.output_throughput for p in sweep.points]
    labels = [sweep.spec.label(v) for v in sweep.spec.values]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    panels = ((ax1, "TTFT", "ttft_ms"), (ax2, "TPOT", "tpot_ms"))
    for ax, name, attr in panels:
        for stat, style in (("mean", "o-"), ("p99", "s--")):
            ys = [getattr(getattr(p.stats, attr), stat) for p in sweep.points]
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{name} {stat}")
        for x, y, label in zip(xs, [getattr(p.stats, attr).mean for p in sweep.points], labels):
            if y is not None:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set_xlabel("output throughput (tok/s)")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(f"{name} vs throughput")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Sweep over {sweep.spec.kind}: {sweep.points[0].model}")
    fig.savefig(path, dpi=110)
