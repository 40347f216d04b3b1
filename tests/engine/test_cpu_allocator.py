"""The CPU runner keeps freed activation memory in the process, so a step's large temporaries reuse warm pages."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from engine.cpu_allocator import keep_freed_memory


def _page_faults(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _a_step():
    x = torch.empty(4 << 20).fill_(1.0)  # 16 MiB: above glibc's default mmap threshold
    y = x * 2
    del x, y


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_repeated_large_allocation_reuses_its_pages():
    assert keep_freed_memory()
    faults = [_page_faults(_a_step) for _ in range(30)]
    # Untuned glibc maps and unmaps both 16 MiB buffers every time: ~8,192 faults in every step. Tuned, the
    # heap grows while the first steps find their places among other allocations, then the same pages
    # serve the later steps.
    assert sum(faults[-10:]) < 2 * 8192, faults
