"""Session-wide test setup that must happen before any test module imports triton."""

import os

import torch

# Triton reads TRITON_INTERPRET when it is first imported (vLLM imports it too): without a
# GPU, its interpreter runs the kernels of kernels/ on CPU tensors (tests/test_kernels_triton.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
