"""CPU kernels in C, for the work plain torch does badly on the CPU: today decode attention over the paged
cache, read where the blocks lie instead of gathered into a contiguous copy per layer (`paged_decode`); int8
weight-only linear layers in float32, and a Llama decoder's whole decode step built from them and that
attention, in one call (`decode_step`).

The C source ships with the package and is compiled on first use by the machine's C compiler, for the
machine's own instruction set (`-march=native`), into a per-user cache (`build`); a machine without a
compiler raises `CpuKernelUnavailable`, and the engine then keeps its pure-torch path. docs/architecture.md
says why C here rather than a library kernel.
"""

from .build import CpuKernelUnavailable, build_library, kernel_cache_dir
from .decode_step import DecodeStepKernel, LlamaDecodeWeights, LlamaDims, load_decode_step
from .paged_decode import DecodeBatch, PagedDecodeKernel, load_paged_decode

__all__ = ["CpuKernelUnavailable", "DecodeBatch", "DecodeStepKernel", "LlamaDecodeWeights", "LlamaDims",
           "PagedDecodeKernel", "build_library", "kernel_cache_dir", "load_decode_step", "load_paged_decode"]
