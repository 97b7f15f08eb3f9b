"""One OS sandbox per (sample, test split): bubblewrap around `sandbox_driver.py`.

Layers, outermost first:
  - the process runs as an unprivileged uid (one per worker slot when we are root, so
    RLIMIT_NPROC binds and a fork bomb in one slot cannot starve another);
  - bwrap unshares every namespace (no network, own pids, own mounts), mounts only the
    Python interpreter's read-only system tree, a fresh /dev and /proc and a size-capped
    /tmp; nothing of the project, the dataset or the ground-truth cache is visible;
  - the driver sets rlimits (address space, CPU seconds, file size, open files,
    processes) before any candidate code runs;
  - the trusted side gives every message a deadline and a byte budget and kills the whole
    process group; with pid namespaces the kernel then kills every process inside.

`sandbox: none` keeps the subprocess, uid and rlimits but drops bwrap: it is for
machines without user namespaces, and every result row records it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from skipbench.execute import sandbox_driver
from skipbench.execute import values
from skipbench.execute import cgroup, seccomp
from skipbench.execute.proctable import descendants, tasks_of_uid, threads_of_uid, wait_gone
from skipbench.execute.sandbox_profile import (  # noqa: F401 - re-exported: the sandbox's public names
    SandboxProfile,
    SandboxUnavailable,
    _site_mounts,
    _sys_path,
    _system_mounts,
    make_profile,
)
from skipbench.execute.slots import kill_uid, lease_uids

log = logging.getLogger(__name__)

# The program run inside: the value codec, then the driver (which imports it only as a library).
DRIVER_SOURCE = Path(values.__file__).read_text() + "\n\n" + Path(sandbox_driver.__file__).read_text()


class ProtocolError(RuntimeError):
    """The sandbox wrote something that is not a driver message (or too much of it)."""


MAX_HEADER = 1 << 16  # a relay header line is tiny; values travel as sized payloads


@dataclass
class Usage:
    wall_s: float = 0.0
    startup_s: float = float("nan")  # spawn -> driver ready: the sandbox overhead
    cpu_s: float = 0.0
    # Peak RSS as the driver reports it when it finishes (NaN otherwise). Self-reported,
    # so informational only: the kernel's figure for our direct child would include the
    # RSS of this (large) process it was forked from. RLIMIT_AS is the actual guard.
    peak_mb: float = float("nan")
    exit_code: int | None = None  # None when killed by a signal
    signal: int | None = None


class SandboxRun:
    """A running sandbox. Use as a context manager; read with `next_message`.

    `uid`: the leased slot uid to run as (root only; see slots.py), else None."""

    def __init__(self, profile: SandboxProfile, job: dict, uid: int | None, cpu_s: int):
        self.profile, self.uid = profile, uid
        self.usage = Usage()
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for a newline
        self._tmp: str | None = None
        self._job = dict(job, limits=self._limits(cpu_s), sys_path=_sys_path(profile), importable=list(profile.importable))

    def _limits(self, cpu_s: int) -> dict:
        # RLIMIT_NPROC counts every task of the uid: ours (bwrap's monitor, its init,
        # the relay, the runner) plus, when not root, everything else this user runs.
        base = 4 if self.profile.kind == "bwrap" else 2
        if self.uid is None:
            base += threads_of_uid(os.getuid())
        return {
            "memory_mb": self.profile.memory_mb,
            "cpu_s": int(cpu_s),
            "fsize_mb": self.profile.tmp_mb,
            "nofile": self.profile.nofile,
            "nproc": base + self.profile.nproc_extra,
            "output_mb": self.profile.max_output_mb,
        }

    def _argv(self, seccomp_fd: int | None) -> list[str]:
        py = [self.profile.python, "-I", "-S", "-B", "-c", DRIVER_SOURCE]
        if self.profile.kind == "none":
            return py
        size = str(self.profile.tmp_mb << 20)
        return [
            "bwrap", "--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000",
            "--disable-userns", "--die-with-parent", "--new-session", "--clearenv", "--as-pid-1",
            *_system_mounts(self.profile), *_site_mounts(self.profile),
            "--proc", "/proc", "--dev", "/dev",
            # Every writable place is a size-capped tmpfs; the root and /dev are read-only
            # (bwrap's own root and /dev tmpfs are otherwise writable without a cap).
            "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--remount-ro", "/",
            *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
            "--chdir", "/tmp", "--setenv", "HOME", "/tmp",
            *py,
        ]  # fmt: skip

    def __enter__(self) -> "SandboxRun":
        cwd = None
        if self.profile.kind == "none":
            self._tmp = cwd = tempfile.mkdtemp(prefix="skipbench-nosandbox-")
            if self.uid is not None:
                os.chown(cwd, self.uid, self.uid)
        filt = None
        if self.profile.seccomp != "none":
            r, w = os.pipe()  # the program is < 1 KiB: fits the pipe buffer
            os.write(w, seccomp.program())
            os.close(w)
            filt = r
        self._group = None
        argv = self._argv(filt)
        if self.profile.memory_cgroup != "none":
            where = cgroup.parent()
            if where is None:
                raise SandboxUnavailable("the memory cgroup of this profile cannot be made here")
            name = f"skipbench-{os.getpid()}-{secrets.token_hex(6)}"
            self._group = cgroup.MemoryGroup(where, name, self.profile.cgroup_mb() << 20, self.uid)
            argv = self._group.wrap(argv)
        self._t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={}, cwd=cwd, start_new_session=True, close_fds=True, pass_fds=(filt,) if filt else (),
                user=self.uid, group=self.uid, extra_groups=[] if self.uid is not None else None,
            )  # fmt: skip
        finally:
            if filt is not None:
                os.close(filt)
        try:
            self.proc.stdin.write(json.dumps(self._job).encode() + b"\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; next_message reports it
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ, "out")
        self._sel.register(self.proc.stderr, selectors.EVENT_READ, "err")
        self.stderr = b""
        return self

    def _fill(self, deadline: float) -> bool:
        """Read what arrives before `deadline` into the buffer; False at end of output. What
        is already waiting counts as in time: another worker holding the GIL must not
        turn a prompt message into a timeout."""
        while self._sel.get_map():
            got = False
            ready = self._sel.select(max(0.0, deadline - time.perf_counter()))
            if not ready:
                raise TimeoutError
            for key, _ in ready:
                chunk = os.read(key.fileobj.fileno(), 1 << 20)
                if not chunk:
                    self._sel.unregister(key.fileobj)
                elif key.data == "err":
                    self.stderr = (self.stderr + chunk)[-4096:]
                else:
                    self._buf += chunk
                    got = True
            if got:
                return True
        return False

    def _line(self, deadline: float) -> bytes | None:
        """One header line; linear in the bytes read (each byte is searched once)."""
        while True:
            end = self._buf.find(b"\n", self._scan)
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                self._scan = 0
                return line
            self._scan = len(self._buf)
            if self._scan > MAX_HEADER:
                raise ProtocolError("header too long")
            if not self._fill(deadline):
                if self._buf:
                    raise ProtocolError("truncated message")
                return None

    def _payload(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            if not self._fill(deadline):
                raise ProtocolError("truncated payload")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def next_message(self, deadline: float, header_slack: float = 0.0) -> tuple[dict, bytes | None] | None:
        """The next relay message and its payload; None at end of output. Raises
        TimeoutError when no header arrives by `deadline` (perf_counter) + `header_slack`
        or its payload of n bytes not by `deadline` + 2 `transfer_s(n)` (runner to relay,
        relay to us); ProtocolError on anything that is not a well-formed message,
        whatever the bytes are."""
        line = self._line(deadline + header_slack)
        if line is None:
            return None
        try:
            msg = json.loads(line)
        except Exception:  # noqa: BLE001 - recursion, overflow, memory, unicode: all the sandbox's fault
            raise ProtocolError("not JSON") from None
        if type(msg) is not dict:
            raise ProtocolError("not an object")
        payload = None
        if "n" in msg:
            n = msg["n"]
            if type(n) is not int or not 0 <= n <= self.profile.max_output_mb << 20:
                raise ProtocolError("bad payload size")
            payload = self._payload(n, deadline + 2 * sandbox_driver.transfer_s(n))
        if msg.get("ready") is True and self.usage.startup_s != self.usage.startup_s:
            self.usage.startup_s = time.perf_counter() - self._t0
        if msg.get("done") is True and type(msg.get("peak_kb")) is int and 0 <= msg["peak_kb"] < 1 << 40:
            self.usage.peak_mb = msg["peak_kb"] / 1024
        return msg, payload

    def __exit__(self, *exc) -> None:
        # A driver that finished exits by itself; give it a moment so its resource
        # usage is complete, then kill the process group and every descendant (the
        # sandboxed process sits in its own session, so the group alone misses it).
        deadline = time.perf_counter() + (0.5 if exc[0] is None else 0.0)
        status = None
        while status is None:
            pid, st, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                status = st
            elif time.perf_counter() >= deadline:
                inside = descendants(self.proc.pid)
                for target in (-self.proc.pid, *inside):
                    try:
                        os.kill(target, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                pid, status, ru = os.wait4(self.proc.pid, 0)
                wait_gone(inside)
            else:
                time.sleep(0.002)
        if self.uid is not None:  # leased to this slot: every task of it is ours
            kill_uid(self.uid)
            wait_gone(tasks_of_uid(self.uid))
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._sel.close()
        self.proc.stdout.close()
        self.proc.stderr.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._group is not None:
            self._group.close()
        u = self.usage
        u.wall_s = time.perf_counter() - self._t0
        u.cpu_s = ru.ru_utime + ru.ru_stime
        if os.WIFSIGNALED(status):
            u.signal = os.WTERMSIG(status)
        else:
            u.exit_code = os.WEXITSTATUS(status)


def check_sandbox(profile: SandboxProfile) -> None:
    """Refuse to run untrusted code unless the sandbox really isolates it."""
    if not os.access(profile.python, os.X_OK):  # a wrong path: turning isolation off would not help
        raise SandboxUnavailable(f"execution.python: {profile.python} is not an executable interpreter on this machine")
    if profile.kind == "none":
        banner = "!" * 78
        log.warning("%s\n!! execution.sandbox: none -- untrusted code runs WITHOUT bubblewrap "
                    "isolation\n%s", banner, banner)  # fmt: skip
        print("WARNING: execution.sandbox is 'none': generated code runs without the sandbox",
              file=sys.stderr)  # fmt: skip
        return
    probe = (
        "import os, socket\n"
        "def probe(paths):\n"
        "    try:\n"
        "        s = socket.socket()\n"
        "        s.settimeout(1)\n"
        "        net = s.connect_ex(('1.1.1.1', 53)) == 0\n"
        "    except OSError:\n"
        "        net = False\n"
        "    try:\n"
        "        os.close(os.open('/usr/.skipbench_probe', os.O_WRONLY | os.O_CREAT)); ro = False\n"
        "    except OSError:\n"
        "        ro = True\n"
        "    return [os.getuid(), net, ro, [os.path.exists(p) for p in paths], sorted(os.environ)]\n"
    )
    secret = [str(Path.cwd()), sys.prefix, str(Path.home()), "/etc/passwd"]
    job = {"code": probe, "entry_point": "probe", "inputs": [[secret]], "time_limits": [5.0],
           "mode": "run", "output_mode": "value", "load_limit_s": 5.0}  # fmt: skip
    value, err = None, b""
    try:
        with lease_uids(profile.uid_base, 1) as (uid,), SandboxRun(profile, job, uid, cpu_s=10) as run:
            for _ in range(6):
                got = run.next_message(time.perf_counter() + 15.0)
                if got is None or got[1] is not None:
                    value = got and values.loads(got[1], 1 << 10)
                    break
            err = run.stderr
    except (TimeoutError, ProtocolError, OSError) as e:
        raise SandboxUnavailable(f"sandbox probe failed ({e!r})") from e
    if value is None:
        raise SandboxUnavailable(
            f"bubblewrap does not start here: {err.decode(errors='replace')[-400:]} "
            "(unprivileged user namespaces must be enabled, e.g. on Ubuntu 24.04 "
            "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`); "
            "set execution.sandbox: none to run without it (not recommended)"
        )
    uid, net, ro, seen, env = value
    problems = [
        *(["network reachable"] if net else []),
        *(["/usr writable"] if not ro else []),
        *[f"{p} visible" for p, s in zip(secret, seen) if s],
        *([f"environment leaks {env}"] if set(env) - {"HOME", "LC_CTYPE", "PWD", "OMP_NUM_THREADS"} else []),
    ]
    if problems:
        raise SandboxUnavailable("sandbox is not isolating: " + ", ".join(problems))
    log.info("sandbox ok: %s, startup %.3fs", profile.tool_version, run.usage.startup_s)
