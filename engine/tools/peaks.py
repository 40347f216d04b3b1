"""The peak FLOP/s and memory bandwidth that utilization is measured against, and `kvserve calibrate`.

Where a peak comes from, first match wins:

1. `--peak-flops TFLOP/S` and `--peak-bandwidth TB/S`, both given: declared by the user.
2. `--peak-gpu NAME`: a datasheet preset (engine.roofline.GPU_PRESETS); either flag above overrides its field.
3. auto, on a GPU: the preset whose name the CUDA device's name contains (an "NVIDIA H200" gets H200's).
4. auto, on the CPU: the last `kvserve calibrate` on this machine at this torch thread count (a JSON file
   under the kvserve cache directory). Datasheets do not give a shared VM's share of a CPU, so it is measured:
   the best fp32 matmul FLOP/s and the best copy/reduction bytes/s of a few short runs.
5. otherwise none: FLOPs and bytes are still counted, utilization is not (the gauges read NaN).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..roofline import GPU_PRESETS, Peak

CALIBRATION_FILE = "peak-cpu.json"


@dataclass(frozen=True, slots=True)
class PeakArgs:
    gpu: str | None = None
    flops_tflops: float | None = None
    bandwidth_tbs: float | None = None

    def __post_init__(self) -> None:
        if self.gpu is not None and self.gpu not in GPU_PRESETS:
            raise ValueError(f"peak_gpu: unknown preset {self.gpu!r}; use one of {', '.join(GPU_PRESETS)}")
        for name in ("flops_tflops", "bandwidth_tbs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"peak_{name.split('_')[0]}: must be > 0, got {value}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("roofline peak (for the utilization metrics)")
        g.add_argument("--peak-gpu", default=None, choices=sorted(GPU_PRESETS),
                       help="datasheet preset (default: the CUDA device's own, or the CPU's `kvserve calibrate` result)")
        g.add_argument("--peak-flops", type=float, default=None, help="peak dense compute in TFLOP/s")
        g.add_argument("--peak-bandwidth", type=float, default=None, help="peak memory bandwidth in TB/s")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "PeakArgs":
        return cls(gpu=args.peak_gpu, flops_tflops=args.peak_flops, bandwidth_tbs=args.peak_bandwidth)

    def resolve(self, device_type: str, device_name: str = "", threads: int | None = None) -> Peak | None:
        """The peak for a device ("cuda" with its name, or "cpu" with the torch thread count), or None."""
        base: Peak | None = None
        if self.gpu is not None:
            base = GPU_PRESETS[self.gpu].peak
        elif not (self.flops_tflops and self.bandwidth_tbs):
            base = auto_peak(device_type, device_name, threads)
        if self.flops_tflops is None and self.bandwidth_tbs is None:
            return base
        flops = self.flops_tflops * 1e12 if self.flops_tflops else (base.flops if base else None)
        bandwidth = self.bandwidth_tbs * 1e12 if self.bandwidth_tbs else (base.bandwidth if base else None)
        if flops is None or bandwidth is None:
            raise ValueError("peak_flops: with no preset or calibration to fill in the other, give both "
                             "--peak-flops and --peak-bandwidth")
        source = "declared" if base is None else f"{base.source}, overridden"
        return Peak(source, flops, bandwidth)


def auto_peak(device_type: str, device_name: str = "", threads: int | None = None) -> Peak | None:
    if device_type == "cuda":
        name = device_name.upper().replace(" ", "-")
        for key in sorted(GPU_PRESETS, key=len, reverse=True):  # "A100-80GB" before shorter names
            if key.split("-")[0] in name:
                return GPU_PRESETS[key].peak
        return None
    return load_calibration(threads)


# ---- CPU calibration --------------------------------------------------------------------------------------
def calibration_path() -> Path:
    from ..models.resolve import cache_root

    return cache_root() / CALIBRATION_FILE


def load_calibration(threads: int | None, path: Path | None = None) -> Peak | None:
    path = path or calibration_path()
    try:
        entry = json.loads(path.read_text()).get(str(threads))
    except (OSError, ValueError):
        return None
    if not entry:
        return None
    return Peak(f"CPU, measured by kvserve calibrate {entry['measured_at']} ({threads} threads)",
                float(entry["flops"]), float(entry["bandwidth"]))


def measure_cpu(rounds: int = 5, matmul_size: int = 1024, copy_mib: int = 256) -> tuple[float, float]:
    """(best fp32 matmul FLOP/s, best bytes/s of a large copy or sum) at the current torch thread count."""
    import torch

    a = torch.randn(matmul_size, matmul_size)
    b = torch.randn(matmul_size, matmul_size)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best_mm = min(_timed(lambda: torch.mm(a, b)) for _ in range(rounds))
    src = torch.ones(copy_mib << 18)  # float32: 4 bytes each
    dst = torch.empty_like(src)
    dst.copy_(src)
    best_copy = min(_timed(lambda: dst.copy_(src)) for _ in range(rounds))
    best_sum = min(_timed(lambda: src.sum()) for _ in range(rounds))
    nbytes = src.numel() * 4
    return 2.0 * matmul_size ** 3 / best_mm, max(2 * nbytes / best_copy, nbytes / best_sum)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def save_calibration(threads: int, flops: float, bandwidth: float, path: Path | None = None) -> Path:
    path = path or calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[str(threads)] = {"flops": flops, "bandwidth": bandwidth,
                          "measured_at": time.strftime("%Y-%m-%d %H:%M", time.localtime())}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


# ---- `kvserve calibrate` ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each measurement; the best counts")
    parser.add_argument("--matmul-size", type=int, default=1024, help="N of the N x N x N fp32 matmul")
    parser.add_argument("--no-save", action="store_true", help="print only; do not record the result")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.cpu_threads is not None:
        torch.set_num_threads(args.cpu_threads)
    threads = torch.get_num_threads()
    flops, bandwidth = measure_cpu(args.rounds, args.matmul_size)
    print(f"CPU peak, {threads} torch threads: {flops / 1e9:,.1f} GFLOP/s (fp32 matmul {args.matmul_size}^3), "
          f"{bandwidth / 1e9:,.1f} GB/s (copy/sum of 256 MiB); ridge {flops / bandwidth:,.1f} FLOP/byte")
    if not args.no_save:
        print(f"saved to {save_calibration(threads, flops, bandwidth)}; kvserve serve and bench use it on the CPU "
              f"at {threads} threads")
    return 0


def peak_for(args: PeakArgs, device) -> Peak | None:
    """`args.resolve` for a torch device: the CUDA device's name, or the CPU's current torch thread count."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return args.resolve("cuda", torch.cuda.get_device_name(device))
    return args.resolve("cpu", threads=torch.get_num_threads())
