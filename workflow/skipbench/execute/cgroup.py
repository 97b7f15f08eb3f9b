"""A memory cgroup per sandbox, where the machine lets us make one (root, cgroup v1 memory
controller or v2 with memory delegated). RLIMIT_AS bounds each process; the cgroup bounds
their sum, tmpfs pages included (they are charged to the cgroup that wrote them).

The sandbox's first process puts itself in the group before it execs bubblewrap
(`/bin/sh -c 'echo $$ > cgroup.procs; exec ...'`), so nothing it forks escapes it.
"""

from __future__ import annotations

import os
from pathlib import Path

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def _own(controller: str) -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(","):
                return path
    except (OSError, ValueError):
        return None
    return None


def parent() -> tuple[Path, str] | None:
    """(directory to make sandbox groups in, "v1" | "v2"), or None where we cannot."""
    if os.geteuid() != 0:
        return None
    own = _own("memory")
    if own is not None and (V1 / "memory.limit_in_bytes").exists():
        base = V1 / own.lstrip("/")
        return (base, "v1") if os.access(base, os.W_OK) else None
    own, controllers = _own(""), V2 / "cgroup.controllers"
    if own is not None and controllers.exists() and "memory" in controllers.read_text().split():
        base = V2 / own.lstrip("/")
        if os.access(base, os.W_OK) and "memory" in (base / "cgroup.subtree_control").read_text().split():
            return base, "v2"
    return None


class MemoryGroup:
    """One group with a byte limit; `wrap(argv)` makes a command that joins it first."""

    def __init__(self, where: tuple[Path, str], name: str, limit_bytes: int, uid: int | None):
        base, self.kind = where
        self.path = base / name
        self.path.mkdir()
        try:
            if self.kind == "v1":
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                swap = self.path / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(str(limit_bytes))
            else:
                (self.path / "memory.max").write_text(str(limit_bytes))
                (self.path / "memory.swap.max").write_text("0")
            if uid is not None:  # the first process runs as the slot uid and moves itself
                os.chown(self.path / "cgroup.procs", uid, uid)
        except OSError:
            self.close()
            raise

    def wrap(self, argv: list[str]) -> list[str]:
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def close(self) -> None:
        """Remove the group (its processes were killed and reaped before)."""
        try:
            self.path.rmdir()
        except OSError:
            pass
