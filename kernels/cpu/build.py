"""Compiling a shipped C source into a shared library, once per source, compiler and machine.

The library is keyed by a hash of the source, the flags, the compiler's version line and the CPU's model
and feature flags (the code is built with `-march=native`), so a cache shared by machines with different
CPUs never hands one of them code it cannot run. Builds write a temporary file and rename it into place:
processes that build at the same time (tests, tensor-parallel ranks) each end with a complete library.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("-O3", "-fno-math-errno", "-shared", "-fPIC")
# OpenMP spreads the work over torch's own threads: torch's libgomp is already loaded when the library is,
# and the dynamic linker binds the library to that copy. Without OpenMP the kernel runs on one thread.
OPENMP = ("-fopenmp",)
NO_OPENMP = ("-fopenmp-simd",)


class CpuKernelUnavailable(RuntimeError):
    """No C compiler, or the source did not compile: the caller keeps its torch path."""


def kernel_cache_dir() -> Path:
    """$KVSERVE_KERNEL_CACHE, else $XDG_CACHE_HOME/kvserve/kernels, else ~/.cache/kvserve/kernels."""
    if os.environ.get("KVSERVE_KERNEL_CACHE"):
        return Path(os.environ["KVSERVE_KERNEL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kvserve" / "kernels"


def find_compiler() -> str:
    """$CC, else cc, gcc or clang on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise CpuKernelUnavailable("no C compiler: set CC or install gcc (e.g. apt-get install gcc)")


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return platform.machine() + "\n" + "\n".join(sorted(set(keep)))


def build_library(source: Path, cache_dir: Path | None = None, march: str = "native") -> Path:
    """The shared library compiled from `source` for `-march=<march>` (built now unless the cache holds it).
    The default, native, is this machine's instruction set; another value (e.g. x86-64) builds the portable
    code paths a machine without AVX2 would run."""
    cc = find_compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    text, machine = source.read_bytes(), _cpu_identity().encode()
    cache_dir = cache_dir or kernel_cache_dir()
    builds = []  # (flags, target): with OpenMP first, then without
    for extra in (OPENMP, NO_OPENMP):
        flags = (*FLAGS, f"-march={march}", *extra)
        key = hashlib.sha256(b"\0".join([text, " ".join(flags).encode(), "".join(version).encode(), machine]))
        builds.append((flags, cache_dir / f"{source.stem}-{key.hexdigest()[:20]}.so"))
    for _, target in builds:  # a library built before, even the fallback: no compiler run at all
        if target.exists():
            return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags, target in builds:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
        os.close(fd)
        done = subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(f"{cc} {' '.join(flags)}: {done.stderr.strip()[-400:]}")
    raise CpuKernelUnavailable(f"{source.name} did not compile:\n" + "\n".join(errors))
