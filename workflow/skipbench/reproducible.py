"""CPU code paths pinned for bit-identical training on any x86-64 machine with AVX2.

Read by torch (ATen), MKL and oneDNN when they load, so a process sets them before it
imports torch (workflow/scripts/checkpoint.py). A machine with AVX-512 would otherwise
take wider SIMD paths that round differently; AVX2 is on every x86-64 server CPU since
about 2015. This module must not import torch.
"""

import os

REPRODUCIBLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu_paths() -> None:
    """Set REPRODUCIBLE_ENV in this process (a value the user exported wins)."""
    for key, value in REPRODUCIBLE_ENV.items():
        os.environ.setdefault(key, value)
