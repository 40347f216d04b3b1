"""The GPU idle probe's arithmetic, on a hand-made device timeline (the probe itself needs CUDA:
tests/engine/test_gpu_engine.py runs it)."""

from __future__ import annotations

import pytest

from engine.tools.gpu_idle import device_intervals, idle_summary, union_length


def test_overlapping_device_operations_count_once():
    assert union_length([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert union_length([(3, 4)]) == 1 and union_length([]) == 0


def test_idle_is_the_span_not_covered_by_any_device_operation():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "ts": 100, "dur": 40},
        {"ph": "X", "cat": "gpu_memcpy", "ts": 130, "dur": 20},   # overlaps the kernel
        {"ph": "X", "cat": "cuda_runtime", "ts": 0, "dur": 500},  # host-side API call: not device time
        {"ph": "X", "cat": "kernel", "ts": 300, "dur": 100},
        {"ph": "i", "cat": "kernel", "ts": 900},                   # an instant marker, not an operation
    ]}
    intervals = device_intervals(trace)
    assert intervals == [(100.0, 140.0), (130.0, 150.0), (300.0, 400.0)]
    s = idle_summary(intervals, num_steps=2, wall_s=0.001)
    assert s["span_ms_per_step"] == pytest.approx(0.150) and s["busy_ms_per_step"] == pytest.approx(0.075)
    assert s["idle_ms_per_step"] == pytest.approx(0.075) and s["idle_fraction"] == pytest.approx(0.5)


def test_a_trace_without_device_activity_is_an_error_not_zero_idle():
    with pytest.raises(RuntimeError, match="no device activity"):
        idle_summary([], num_steps=3, wall_s=1.0)
