"""Host uids for sandbox slots, leased per run so that concurrent runs never share one.

As root each slot runs as its own unprivileged uid (RLIMIT_NPROC then binds per slot,
and everything of that uid can be killed at teardown). A uid belongs to a run while the
run holds an exclusive `flock` on `<lock dir>/<uid>.lock`; the kernel drops the lock
when the process dies, so a crashed run frees its uids. A range that holds an existing
user (passwd) or a process that no live lease explains is refused before anything runs:
during the lease every task of the uid was then started by this slot, so killing them
all at teardown kills only our own. Not root: no uid switching, and cleanup kills the
sandbox's own tree only.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from skipbench.execute.proctable import tasks_of_uid, uids_in_use

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


def _locked_by_another(directory: Path, uid: int) -> bool:
    try:
        fd = os.open(directory / f"{uid}.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the probe's own lock, if it got one


def check_uid_range(uid_base: int, directory: Path) -> None:
    """Refuse a slot range holding an existing user or a process that is not a live lease's."""
    span = range(uid_base, uid_base + SPAN)
    users = sorted({u.pw_uid for u in pwd.getpwall() if u.pw_uid in span})
    if users:
        raise ValueError(f"execution.uid_base {uid_base}: uids {uid_base}..{span[-1]} hold existing users "
                         f"{users[:5]}; choose a range no account uses")  # fmt: skip
    busy = {u: pids for u, pids in uids_in_use().items() if u in span and not _locked_by_another(directory, u)}
    if busy:
        raise ValueError(f"execution.uid_base {uid_base}: uids {uid_base}..{span[-1]} hold running processes "
                         f"{dict(list(busy.items())[:5])} that no skipbench run leases; choose another range")  # fmt: skip


@contextmanager
def lease_uids(uid_base: int, count: int) -> Iterator[list[int | None]]:
    """`count` slot uids held exclusively until the block ends ([None] * count when not root)."""
    if os.geteuid() != 0:
        yield [None] * count
        return
    held: list[tuple[int, int]] = []
    directory = lock_dir()
    check_uid_range(uid_base, directory)
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
        if len(held) < count:
            raise RuntimeError(f"only {len(held)} of {count} sandbox uids free in {uid_base}..{uid_base + SPAN - 1}")
        yield [uid for uid, _ in held]
    finally:
        for uid, fd in held:
            kill_uid(uid)
            os.close(fd)
