"""The CPU runner keeps freed activation memory in the process, so a step's large temporaries reuse warm pages.

The check drives glibc's malloc directly (torch's CPU tensors come from it) with a step-like pattern: eight
20 MiB buffers written and freed, again and again. With glibc's defaults every round maps fresh pages
(~41,000 page faults per round); with the settings applied, only the first round does.
"""

from __future__ import annotations

import ctypes
import resource
import sys

import pytest

from engine.worker.cpu_allocator import keep_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")


def _rounds_of_page_faults(buffers: int, size: int, rounds: int) -> list[int]:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ptrs = [libc.malloc(size) for _ in range(buffers)]
        assert all(ptrs)
        for p in ptrs:
            libc.memset(p, 1, size)
        for p in ptrs:
            libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def test_large_buffers_freed_in_one_step_are_reused_without_page_faults_in_the_next():
    assert keep_freed_memory()
    faults = _rounds_of_page_faults(buffers=8, size=20 << 20, rounds=5)
    pages = 8 * (20 << 20) // resource.getpagesize()
    assert all(f < pages // 100 for f in faults[1:]), (faults, pages)
