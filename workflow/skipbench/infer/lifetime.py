"""Engine processes die with the job that started them.

vLLM runs its EngineCore and workers as child processes. When a job is killed with
SIGKILL (no cleanup runs), they would outlive it for good, holding memory and CPU.
Linux's PR_SET_PDEATHSIG makes the kernel send a signal to a process when its parent
exits; vLLM loads the `vllm.general_plugins` entry points in every process it starts,
so `register` (one of them, pyproject.toml) sets it in each child: a killed job takes
its EngineCore with it, and the EngineCore its workers.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent exits. False off Linux."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before prctl
        os.kill(os.getpid(), sig)
    return True


def register() -> None:
    """vllm.general_plugins entry point: in a process vLLM started (not the job itself)."""
    if multiprocessing.parent_process() is not None:
        die_with_parent()
