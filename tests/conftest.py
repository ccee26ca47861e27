"""Test settings: one torch thread, and Triton kernels through the CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when ``@triton.jit`` runs, so it is set before any kernel module is imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)
