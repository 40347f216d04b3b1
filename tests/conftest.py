"""Session-wide test setup.

Without CUDA, the Triton kernels run under the Triton interpreter. TRITON_INTERPRET is read when triton is
first imported, so it is set here, before any test module can import triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
