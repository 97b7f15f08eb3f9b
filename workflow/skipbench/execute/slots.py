"""Host uids for sandbox slots, leased per run so that concurrent runs never share one.

As root each slot runs as its own unprivileged uid (RLIMIT_NPROC then binds per slot,
and everything of that uid can be killed at teardown). A uid belongs to a run while the
run holds an exclusive `flock` on `<lock dir>/<uid>.lock`; the kernel drops the lock
when the process dies, so a crashed run frees its uids. Tasks of a uid found at lease
time are leftovers of a dead holder and are killed before the slot is used; during the
lease every task of the uid was started by this slot, so killing them all is killing
only our own. Not root: no uid switching, and cleanup kills the sandbox's own tree only.
"""

from __future__ import annotations

import fcntl
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from skipbench.execute.proctable import tasks_of_uid, wait_gone

SPAN = 1024  # uids uid_base .. uid_base + SPAN - 1 are ours to lease


def lock_dir() -> Path:
    for d in (Path("/run/skipbench-uids"), Path("/tmp/skipbench-uids")):
        try:
            d.mkdir(mode=0o755, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise RuntimeError("no writable directory for sandbox uid locks (/run or /tmp)")


def kill_uid(uid: int) -> None:
    for pid in tasks_of_uid(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def lease_uids(uid_base: int, count: int) -> Iterator[list[int | None]]:
    """`count` slot uids held exclusively until the block ends ([None] * count when not root)."""
    if os.geteuid() != 0:
        yield [None] * count
        return
    held: list[tuple[int, int]] = []
    directory = lock_dir()
    try:
        for uid in range(uid_base, uid_base + SPAN):
            if len(held) == count:
                break
            fd = os.open(directory / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((uid, fd))
            kill_uid(uid)  # a dead holder's leftovers
            wait_gone(tasks_of_uid(uid))
        if len(held) < count:
            raise RuntimeError(f"only {len(held)} of {count} sandbox uids free in {uid_base}..{uid_base + SPAN - 1}")
        yield [uid for uid, _ in held]
    finally:
        for uid, fd in held:
            kill_uid(uid)
            os.close(fd)
