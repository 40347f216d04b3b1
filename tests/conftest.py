"""Session-wide test setup.

Without CUDA, the Triton kernels run under the Triton interpreter. TRITON_INTERPRET is read when triton is
first imported, so it is set here, before any test module can import triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module's tests. On the 2-core test machine, shared with other jobs,
    torch's spinning OpenMP threads make tiny-model steps several times slower than one thread. Restored
    afterwards, so other modules are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
