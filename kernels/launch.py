"""A kernel launch as plain data: the kernel, its grid, its arguments.

Launchers build a `Launch` and run it, so that tools can see the exact arguments a launch passes without a GPU
(kernels.specialization computes the JIT's compile key from them). A NamedTuple: building one costs about as
much as the argument tuple itself, which matters on the per-layer launch path.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Launch(NamedTuple):
    kernel: Any  # a triton JITFunction (an InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict  # constexpr arguments and launch options (num_warps, num_stages)

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)
