"""Progress where the user looks: one concise line at most every 10 s per long loop, on
the terminal that runs Snakemake and in the job's log file (no tqdm `\\r` walls).

    for batch in track(batches, total=n, desc="infer top2", unit="batch"): ...
    with heartbeat("engine start"): llm = LLM(...)   # a blocking call: "still running" lines

A job's stdout/stderr go to its log (skipbench.logs.log_to), so log_to keeps a duplicate
of the original stderr, which Snakemake shows, and names it in SKIPBENCH_TERMINAL as
"pid:fd": the pid keeps child processes (vLLM workers), which inherit the environment
but not the descriptor, from writing into a stranger's file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Iterable, Iterator

log = logging.getLogger("skipbench.progress")

ENV = "SKIPBENCH_TERMINAL"
EVERY_S = 10.0


def terminal_fd() -> int | None:
    """The Snakemake-visible stderr of this process, if log_to set one aside."""
    pid, _, fd = os.environ.get(ENV, "").partition(":")
    if pid == str(os.getpid()) and fd.isdigit():
        return int(fd)
    return None


def emit(line: str) -> None:
    """`line` to the log file (when log_to routes stderr there) and to the terminal."""
    fd = terminal_fd()
    if fd is None:
        print(line, file=sys.stderr, flush=True)
        return
    log.info(line)
    with contextlib.suppress(OSError):
        os.write(fd, f"[skipbench] {line}\n".encode())


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def status_line(desc: str, done: int, total: int | None, elapsed: float, unit: str, postfix: dict) -> str:
    """'desc: done/total unit (pct%), rate unit/s, ETA t, k=v' (parts without data left out)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{desc}: {done}/{total} {unit}" + (f" ({100 * done / total:.0f}%)" if total else "") if total
             else f"{desc}: {done} {unit}"]  # fmt: skip
    if done:
        parts.append(f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}")
    if total and done and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    parts.append(f"elapsed {_duration(elapsed)}")
    parts += [f"{k}={v}" for k, v in postfix.items()]
    return ", ".join(parts)


class Track:
    """Iterate over `iterable`, reporting at the first item, every EVERY_S and at the end."""

    def __init__(self, iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it",
                 every: float = EVERY_S):  # fmt: skip
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.done, self.postfix, self.closed = 0, {}, False
        self.start = self.last = time.monotonic()

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def report(self) -> None:
        self.last = time.monotonic()
        emit(status_line(self.desc, self.done, self.total, self.last - self.start, self.unit, self.postfix))

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.every:
            self.report()

    def __iter__(self) -> Iterator:
        self.report()  # the phase has started: the user sees it at once
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def close(self) -> None:
        """The final line (also when the loop ended early, e.g. a target loss reached)."""
        if not self.closed:
            self.closed = True
            self.report()


def track(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it") -> Track:
    return Track(iterable, total, desc, unit)


@contextlib.contextmanager
def heartbeat(desc: str, every: float = EVERY_S):
    """'desc: running, elapsed t' every `every` s while a blocking call runs, and how long
    it took; a call shorter than `every` prints nothing (generation batches stay quiet)."""
    stop = threading.Event()
    start = time.monotonic()
    beats = []

    def beat():
        while not stop.wait(every):
            beats.append(1)
            emit(f"{desc}: running, elapsed {_duration(time.monotonic() - start)}")

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat {desc}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if beats:
            emit(f"{desc}: done in {_duration(time.monotonic() - start)}")
