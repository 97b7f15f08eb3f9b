"""A job's life: it dies with the Snakemake that started it, and it never runs beside a
live earlier job writing the same outputs.

Every stage script starts with `start_job(snakemake)`. Without it, `kill -9` of Snakemake
left its running job alive (re-parented to init) for minutes, and a rerun after
`--unlock` started a second job on the same outputs, staging folders and cache.

- Dying with Snakemake: the kernel sends SIGTERM to the job when its parent exits
  (PR_SET_PDEATHSIG, skipbench.infer.lifetime); Snakemake runs a script job as its direct child
  (bash execs the interpreter). Where a shell or a conda activation stands between them, a
  watcher thread polls the nearest Snakemake ancestor. Either way the job SIGKILLs its
  descendants (sandboxes, subprocesses), then itself. The engine processes vLLM starts die with the job
  (lifetime.register).
- Holding the outputs: a lock file beside the first output names the job's process (pid
  and start time, so a reused pid is no owner). A job whose outputs are held by a live
  process refuses to start, naming it; a lock of a dead process is taken over.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from skipbench.infer.lifetime import die_with_parent
from skipbench.logs import log_to

log = logging.getLogger(__name__)


def process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot, /proc/<pid>/stat field 22),
    None if there is no such process. (pid, start) names a process: pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after "(comm)" start at field 3


def alive(pid: int, start: int) -> bool:
    return process_start(pid) == start


def snakemake_ancestor(pid: int | None = None) -> int | None:
    """The nearest ancestor process running Snakemake (an argument named `snakemake`:
    `.../bin/snakemake` or `-m snakemake`), None if there is none."""
    pid = os.getppid() if pid is None else pid
    while pid > 1:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if any(os.path.basename(a.decode(errors="replace")) == "snakemake" for a in args):
            return pid
        pid = int(stat[stat.rindex(")") + 2:].split()[1])  # ppid: field 4
    return None


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(*_) -> None:
    """SIGKILL this process's descendants, then this process (also a signal handler)."""
    for child in _descendants(os.getpid()):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def kill_tree_when_gone(pid: int, start: int, interval_s: float = 1.0) -> threading.Thread:
    """Watch process (pid, start); once it has exited, kill_tree()."""

    def watch():
        while alive(pid, start):
            time.sleep(interval_s)
        kill_tree()

    thread = threading.Thread(target=watch, name="die-with-snakemake", daemon=True)
    thread.start()
    return thread


def die_with_snakemake() -> int | None:
    """Tie this job's life, and its descendants', to Snakemake's (see the module docstring).
    Returns the pid watched. Main thread only (it installs a SIGTERM handler)."""
    # SIGTERM, not SIGKILL: the job first kills what it started (a SIGKILLed job leaves its
    # children running); Snakemake's own SIGTERM to a job does the same
    signal.signal(signal.SIGTERM, kill_tree)
    if not die_with_parent(signal.SIGTERM):
        return None  # not Linux: no prctl, no /proc
    pid = snakemake_ancestor()
    start = process_start(pid) if pid else None
    if start is None:
        return None  # run by hand (tests, a debugger): nothing to die with
    kill_tree_when_gone(pid, start)
    return pid


class OutputsHeld(RuntimeError):
    """A live process (an earlier job on the same outputs) holds the lock."""


def lock_path(first_output: str | os.PathLike) -> Path:
    out = Path(first_output)
    return out.parent / f".{out.name}.job.lock"


def hold_outputs(first_output: str | os.PathLike) -> Path:
    """Take the lock of a job's outputs for this process (released when it exits). Raises
    OutputsHeld when a live process holds it; a dead holder's lock is taken over."""
    path = lock_path(first_output)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "start": process_start(os.getpid())}
    for _ in range(2):  # a dead holder's lock: removed, then taken
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
                pid, start = int(holder["pid"]), int(holder["start"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, start = 0, -1  # torn or foreign: no live holder
            if pid and alive(pid, start):
                raise OutputsHeld(f"{first_output}: an earlier job (pid {pid}) still runs and writes these outputs; "
                                  f"wait for it or kill it (kill {pid}), then rerun") from None
            log.warning("%s: taking over the lock of a job that is gone (pid %s)", first_output, pid or "?")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(_release, path, me)
        return path
    raise OutputsHeld(f"{first_output}: another job took the lock at the same time")


def _release(path: Path, me: dict) -> None:
    try:
        if json.loads(path.read_text()) == me:
            path.unlink()
    except (OSError, ValueError):
        pass


def start_job(smk) -> None:
    """What every stage script does first: log to the job's log, die with Snakemake, hold
    the outputs."""
    log_to(smk.log[0] if smk.log else None)
    die_with_snakemake()
    if smk.output:
        hold_outputs(smk.output[0])
