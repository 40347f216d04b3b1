"""Where utilization's peak comes from (engine/tools/peaks.py): flags, presets, the CUDA device's name, and
`kvserve calibrate` on the CPU."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.roofline import GPU_PRESETS
from engine.tools.peaks import PeakArgs, load_calibration


def test_declared_flags_win_and_are_in_tflops_and_tbs():
    p = PeakArgs(flops_tflops=0.5, bandwidth_tbs=0.02).resolve("cpu", threads=2)
    assert (p.flops, p.bandwidth, p.source) == (0.5e12, 0.02e12, "declared")


def test_a_preset_can_have_one_field_overridden():
    p = PeakArgs(gpu="H100", bandwidth_tbs=3.0).resolve("cpu")
    assert (p.flops, p.bandwidth) == (GPU_PRESETS["H100"].flops, 3.0e12)


def test_a_cuda_device_gets_its_own_preset_by_name():
    assert PeakArgs().resolve("cuda", "NVIDIA H200").flops == GPU_PRESETS["H200"].flops
    assert PeakArgs().resolve("cuda", "NVIDIA A100-SXM4-80GB").bandwidth == GPU_PRESETS["A100-80GB"].bandwidth
    assert PeakArgs().resolve("cuda", "Some Other GPU") is None


def test_bad_peaks_name_the_parameter(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSERVE_CACHE", str(tmp_path))  # no calibration to fill in the other field
    with pytest.raises(ValueError, match="peak_flops"):
        PeakArgs(flops_tflops=1.0).resolve("cpu", threads=1)
    with pytest.raises(ValueError, match="peak_gpu"):
        PeakArgs(gpu="TPU")
    with pytest.raises(ValueError, match="peak_bandwidth"):
        PeakArgs(bandwidth_tbs=-1)


def test_calibrate_measures_records_and_the_cpu_then_uses_it(monkeypatch, tmp_path, capsys, one_torch_thread):
    # (one_torch_thread restores the thread count that calibrate --cpu-threads sets process-wide)
    monkeypatch.setenv("KVSERVE_CACHE", str(tmp_path))
    assert PeakArgs().resolve("cpu", threads=1) is None  # nothing calibrated yet
    assert main(["calibrate", "--cpu-threads", "1", "--rounds", "1", "--matmul-size", "128"]) == 0
    entry = json.loads((tmp_path / "peak-cpu.json").read_text())["1"]
    assert entry["flops"] > 1e6 and entry["bandwidth"] > 1e6
    p = PeakArgs().resolve("cpu", threads=1)
    assert (p.flops, p.bandwidth) == (entry["flops"], entry["bandwidth"]) and "calibrate" in p.source
    assert load_calibration(2, tmp_path / "peak-cpu.json") is None  # another thread count: not measured
    assert "GFLOP/s" in capsys.readouterr().out
