"""Stop glibc malloc from returning large freed buffers to the OS between steps (CPU inference only).

A CPU forward allocates and frees the same large activations every step (a 2048-token prefill chunk of
SmolLM2 makes 5-22 MB tensors in every layer). By default glibc serves such sizes with mmap, or trims them
off the top of the heap when freed, so the next step touches fresh pages and pays a page fault per 4 KiB:
in a profiled prefill the elementwise ops (SiLU, the gated multiply) ran about 2x slower than on warm
memory and the gate/up GEMM that writes 22 MB ~20% slower (docs/benchmarks.md, "CPU memory allocator").
Raising the mmap and trim thresholds keeps those pages in the process, so the steady state reuses them:
the process's resident memory stays at its peak working set instead of shrinking between steps. Tensors over the mmap threshold (the KV cache, large logits) are
unaffected.

The settings are process-wide, like `torch.set_num_threads`; the CPU model runner applies them once.
On non-glibc systems (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Apply the settings; True when glibc accepted all of them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                             (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                             (_M_TOP_PAD, TOP_PAD)))
    if not ok:
        logger.warning("glibc refused some malloc settings; large CPU activations may page-fault every step")
    return ok
