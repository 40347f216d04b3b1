"""A run's engine steps in numbers: time in prefill / decode / mixed steps, model FLOPs and bytes, achieved
FLOP/s and bytes/s, utilization against a peak, and each step as a roofline point. Used by `kvserve bench`
and `kvserve demo kv-cache`; the per-step numbers are the engine's own (`IterationStats.cost`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..outputs import IterationStats
from ..roofline import Peak

KINDS = ("prefill", "decode", "mixed")


@dataclass(frozen=True, slots=True)
class StepPoint:
    kind: str
    seconds: float
    flops: float
    bytes: float
    batch: int  # sequences that got tokens this step (the decode batch for a decode step)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds if self.seconds else 0.0


def step_points(stats: Iterable[IterationStats], batch: int | None = None) -> list[StepPoint]:
    out = []
    for s in stats:
        c = s.cost
        if c is None or c.kind == "idle":
            continue
        out.append(StepPoint(c.kind, s.step_time_s, c.flops, c.bytes, batch if batch is not None else s.num_running))
    return out


def summarize(points: list[StepPoint], peak: Peak | None) -> dict:
    """Totals per step kind and overall; utilization is over the steps' own (busy) time."""
    out: dict = {}
    for kind in (*KINDS, "all"):
        ps = [p for p in points if kind == "all" or p.kind == kind]
        secs, flops, nbytes = sum(p.seconds for p in ps), sum(p.flops for p in ps), sum(p.bytes for p in ps)
        out[kind] = {
            "steps": len(ps), "seconds": secs, "flops": flops, "bytes": nbytes,
            "flops_per_s": flops / secs if secs else None, "bytes_per_s": nbytes / secs if secs else None,
            "arithmetic_intensity": flops / nbytes if nbytes else None,
            "mfu": flops / secs / peak.flops if secs and peak else None,
            "mbu": nbytes / secs / peak.bandwidth if secs and peak else None,
        }
    out["peak"] = None if peak is None else {"source": peak.source, "flops": peak.flops, "bandwidth": peak.bandwidth}
    return out


def format_summary(summary: dict) -> list[str]:
    lines = ["steps      count    time   share   model FLOP/s    bytes/s   FLOP/byte     MFU     MBU"]
    total = summary["all"]["seconds"] or 1.0
    for kind in (*KINDS, "all"):
        s = summary[kind]
        if not s["steps"]:
            continue
        lines.append(f"{kind:9s} {s['steps']:6d} {s['seconds']:7.2f}s {s['seconds'] / total:6.1%}  "
                     f"{_si(s['flops_per_s'])}FLOP/s {_si(s['bytes_per_s'])}B/s {_num(s['arithmetic_intensity'])}"
                     f"  {_pct(s['mfu'])}  {_pct(s['mbu'])}")
    peak = summary["peak"]
    lines.append("MFU / MBU against " + ("no peak (give --peak-gpu or --peak-flops/--peak-bandwidth, or run kvserve calibrate)"
                                         if peak is None else f"{_si(peak['flops'])}FLOP/s and {_si(peak['bandwidth'])}B/s "
                                                              f"({peak['source']})"))
    return lines


def _si(x: float | None) -> str:
    if x is None:
        return "      -   "
    for v, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= v:
            return f"{x / v:8.2f} {p}"
    return f"{x:8.2f}  "


def _num(x: float | None) -> str:
    return "        -" if x is None else f"{x:9.2f}"


def _pct(x: float | None) -> str:
    return "     -" if x is None else f"{x:6.1%}"
