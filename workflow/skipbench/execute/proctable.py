"""The process table, read from /proc: what a sandbox left behind, and waiting for it to go."""

from __future__ import annotations

import os
import time


def tasks_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except FileNotFoundError:
                pass
    return pids


def uids_in_use() -> dict[int, list[int]]:
    """uid -> pids of every process that has it as its real, effective, saved or fs uid."""
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    line = next(ln for ln in f if ln.startswith("Uid:"))
            except (OSError, StopIteration):
                continue  # gone meanwhile
            for uid in set(map(int, line.split()[1:])):
                found.setdefault(uid, []).append(int(entry))
    return found


def threads_of_uid(uid: int) -> int:
    n = 0
    for pid in tasks_of_uid(uid):
        try:
            n += len(os.listdir(f"/proc/{pid}/task"))
        except FileNotFoundError:
            pass
    return n


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                found += kids
                todo += kids
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


def wait_gone(pids: list[int], timeout_s: float = 5.0) -> None:
    """Wait until killed processes have left the process table (reaped, not zombies)."""
    deadline = time.perf_counter() + timeout_s
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.perf_counter() < deadline:
            time.sleep(0.005)
