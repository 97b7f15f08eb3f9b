"""Route a stage's logging, stdout and stderr (engines print a lot) to its Snakemake log."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from skipbench.progress import ENV, terminal_fd


def log_to(path: str | os.PathLike | None, level: int = logging.INFO) -> None:
    """Send logging and the process's stdout/stderr file descriptors to `path`.

    File descriptors, not just sys.stdout, so that output of C extensions and child
    processes (vLLM workers) lands in the log too.
    """
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        if terminal_fd() is None:  # keep Snakemake's stderr for progress lines (skipbench.progress)
            os.environ[ENV] = f"{os.getpid()}:{os.dup(2)}"
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
