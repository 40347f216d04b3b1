"""How long the GPU sits idle in each decode step: torch.profiler's device timeline over a run of steps.

`measure_decode_idle(engine, ...)` fills the engine with decoding sequences, lets the prefills finish, then
profiles `num_steps` calls of `engine.step()` with CUDA activity only (kernels, copies, memsets as the
device ran them, through CUPTI) and returns, per step: the device timeline's span, the time covered by at
least one device operation (busy), and the rest (idle: the device waited for the host). Host-side tracing
is off, so the profiler adds little host time; what it adds makes the idle figure an upper bound.

It uses only `engine.add_request`, `engine.step()` and `SamplingParams`, so it measures any revision of the
engine (scripts/gpu_idle.py loads this file by path and runs it against whichever `engine` is importable).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by at least one of the [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def device_intervals(trace: dict) -> list[tuple[float, float]]:
    """[start, end) in microseconds of every device operation in a chrome trace from torch.profiler."""
    return [(float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0.0))) for ev in trace.get("traceEvents", [])
            if ev.get("ph") == "X" and ev.get("cat") in DEVICE_CATEGORIES]


def idle_summary(intervals: list[tuple[float, float]], num_steps: int, wall_s: float) -> dict:
    if not intervals:
        raise RuntimeError("the profiler recorded no device activity")
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    busy = union_length(intervals)
    per = 1e-3 / num_steps  # microseconds in total -> milliseconds per step
    return {"steps": num_steps, "wall_ms_per_step": wall_s * 1e3 / num_steps, "span_ms_per_step": span * per,
            "busy_ms_per_step": busy * per, "idle_ms_per_step": (span - busy) * per,
            "idle_fraction": (span - busy) / span if span else 0.0}


def measure_decode_idle(engine, num_seqs: int = 64, prompt_len: int = 128, num_steps: int = 20,
                        vocab_size: int | None = None) -> dict:
    """Profile `num_steps` pure decode steps of `num_seqs` greedy sequences; returns `idle_summary`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engine import SamplingParams

    vocab = vocab_size or engine.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=num_steps + 16, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    ids = [f"idle-probe-{i}" for i in range(num_seqs)]
    for rid in ids:
        engine.add_request(rid, torch.randint(3, vocab, (prompt_len,), generator=g).tolist(), params)
    for _ in range(4):  # prefills, then a few decode steps so every sequence decodes
        while engine.step().stats.num_prompt_tokens:
            pass
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(num_steps):
            engine.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    for rid in ids:
        engine.abort_request(rid)
    while engine.has_unfinished_requests():
        engine.step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    return idle_summary(device_intervals(trace), num_steps, wall)
