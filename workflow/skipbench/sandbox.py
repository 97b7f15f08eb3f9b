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
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from skipbench import sandbox_driver
from skipbench.proctable import descendants, tasks_of_uid, threads_of_uid, wait_gone

log = logging.getLogger(__name__)

DRIVER_SOURCE = Path(sandbox_driver.__file__).read_text()


class SandboxUnavailable(RuntimeError):
    pass


class ProtocolError(RuntimeError):
    """The sandbox wrote something that is not a driver message (or too much of it)."""


@dataclass(frozen=True)
class SandboxProfile:
    kind: str  # "bwrap" or "none"
    tool_version: str  # "bubblewrap 0.8.0", or "none"
    python: str  # interpreter run inside (the venv's base interpreter: stdlib only)
    memory_mb: int  # RLIMIT_AS
    tmp_mb: int  # size of the tmpfs /tmp, also RLIMIT_FSIZE
    nofile: int  # RLIMIT_NOFILE
    nproc_extra: int  # processes/threads a candidate may add (RLIMIT_NPROC on top of ours)
    uid_base: int  # slot k runs as uid_base + k when we are root
    max_output_mb: int  # size of one message (one test's output) before the sandbox is killed

    def describe(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def make_profile(exec_cfg: dict) -> SandboxProfile:
    kind = exec_cfg.get("sandbox", "bwrap")
    if kind not in ("bwrap", "none"):
        raise ValueError(f"execution.sandbox must be 'bwrap' or 'none', not {kind!r}")
    version = "none"
    if kind == "bwrap":
        exe = shutil.which("bwrap")
        if exe is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, or set "
                "execution.sandbox: none to run untrusted code without it (not recommended)"
            )
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return SandboxProfile(
        kind=kind,
        tool_version=version,
        python=exec_cfg.get("python") or _default_python(),
        memory_mb=int(exec_cfg.get("memory_mb", 1024)),
        tmp_mb=int(exec_cfg.get("tmp_mb", 16)),
        nofile=int(exec_cfg.get("nofile", 64)),
        nproc_extra=int(exec_cfg.get("nproc_extra", 4)),
        uid_base=int(exec_cfg.get("uid_base", 61000)),
        max_output_mb=int(exec_cfg.get("max_output_mb", 64)),
    )


def _default_python() -> str:
    """The system interpreter of our Python version (stdlib only, readable by any uid);
    else the one we run on (its prefix is then mounted read-only too)."""
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return system if os.access(system, os.X_OK) else os.path.realpath(sys.executable)


def _system_mounts(profile: SandboxProfile) -> list[str]:
    """Read-only /usr (and the interpreter's prefix when it lives elsewhere), with the
    merged-/usr symlinks. No /etc, /home, /root, /work: nothing to read or forge."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64"):
        p = Path("/") / top
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    prefix = str(Path(profile.python).parent.parent)
    if not prefix.startswith("/usr"):
        args += ["--ro-bind", prefix, prefix]
    return args


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
    """A running sandbox. Use as a context manager; read with `next_message`."""

    def __init__(self, profile: SandboxProfile, job: dict, slot: int, cpu_s: int):
        self.profile, self.slot = profile, slot
        self.usage = Usage()
        self._buf = b""
        self._tmp: str | None = None
        self._job = dict(job, limits=self._limits(cpu_s))

    def _uid(self) -> int | None:
        return self.profile.uid_base + self.slot if os.geteuid() == 0 else None

    def _limits(self, cpu_s: int) -> dict:
        uid = self._uid()
        # RLIMIT_NPROC counts every task of the uid: ours (bwrap's monitor, its init,
        # the driver) plus, when not root, everything else this user runs.
        base = 3 if self.profile.kind == "bwrap" else 1
        if uid is None:
            base += threads_of_uid(os.getuid())
        return {
            "memory_mb": self.profile.memory_mb,
            "cpu_s": int(cpu_s),
            "fsize_mb": self.profile.tmp_mb,
            "nofile": self.profile.nofile,
            "nproc": base + self.profile.nproc_extra,
        }

    def _argv(self) -> list[str]:
        py = [self.profile.python, "-I", "-S", "-B", "-c", DRIVER_SOURCE]
        if self.profile.kind == "none":
            return py
        return [
            "bwrap", "--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000",
            "--disable-userns", "--die-with-parent", "--new-session", "--clearenv", "--as-pid-1",
            *_system_mounts(self.profile),
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(self.profile.tmp_mb << 20), "--tmpfs", "/tmp",
            "--chdir", "/tmp", "--setenv", "HOME", "/tmp",
            *py,
        ]  # fmt: skip

    def __enter__(self) -> "SandboxRun":
        uid = self._uid()
        if uid is not None:
            self._kill_uid(uid)  # nothing may be left from an earlier run in this slot
        cwd = None
        if self.profile.kind == "none":
            self._tmp = cwd = tempfile.mkdtemp(prefix="skipbench-nosandbox-")
            if uid is not None:
                os.chown(cwd, uid, uid)
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={}, cwd=cwd, start_new_session=True, close_fds=True,
            user=uid, group=uid, extra_groups=[] if uid is not None else None,
        )  # fmt: skip
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

    def next_message(self, timeout_s: float) -> dict | None:
        """The next driver message; None at end of output. Raises TimeoutError when none
        arrives in `timeout_s`, ProtocolError on garbage or too much output."""
        deadline = time.perf_counter() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            if not self._sel.get_map():
                if self._buf:
                    raise ProtocolError("truncated message")
                return None
            for key, _ in self._sel.select(left):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if not chunk:
                    self._sel.unregister(key.fileobj)
                elif key.data == "err":
                    self.stderr = (self.stderr + chunk)[-4096:]
                else:
                    self._buf += chunk
                    if len(self._buf) > self.profile.max_output_mb << 20:
                        raise ProtocolError("output limit")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise ProtocolError("not JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("not an object")
        if msg.get("ready") is True and self.usage.startup_s != self.usage.startup_s:
            self.usage.startup_s = time.perf_counter() - self._t0
        if msg.get("done") is True and type(msg.get("peak_kb")) is int:
            self.usage.peak_mb = msg["peak_kb"] / 1024
        return msg

    def _kill_uid(self, uid: int) -> None:
        for pid in tasks_of_uid(uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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
        uid = self._uid()
        if uid is not None:
            self._kill_uid(uid)
            wait_gone(tasks_of_uid(uid))
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        uid = self._uid()
        if uid is not None:
            self._kill_uid(uid)
        self._sel.close()
        self.proc.stdout.close()
        self.proc.stderr.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
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
        "    s = socket.socket()\n"
        "    s.settimeout(1)\n"
        "    net = s.connect_ex(('1.1.1.1', 53)) == 0\n"
        "    try:\n"
        "        open('/usr/.skipbench_probe', 'w'); ro = False\n"
        "    except OSError:\n"
        "        ro = True\n"
        "    return [os.getuid(), net, ro, [os.path.exists(p) for p in paths], sorted(os.environ)]\n"
    )
    secret = [str(Path.cwd()), sys.prefix, str(Path.home()), "/etc/passwd"]
    job = {"code": probe, "entry_point": "probe", "inputs": [[secret]], "time_limits": [5.0],
           "mode": "run", "output_mode": "value", "load_limit_s": 5.0}  # fmt: skip
    run = SandboxRun(profile, job, slot=0, cpu_s=10)
    try:
        with run:
            msgs = [run.next_message(15.0) for _ in range(4)]
    except (TimeoutError, ProtocolError, OSError) as e:
        raise SandboxUnavailable(f"sandbox probe failed ({e!r}); stderr: {getattr(run, 'stderr', b'')[-400:]!r}") from e
    outs = [m for m in msgs if m and "out" in m]
    if not outs:
        raise SandboxUnavailable(
            f"bubblewrap does not start here: {run.stderr.decode(errors='replace')[-400:]} "
            "(unprivileged user namespaces must be enabled, e.g. on Ubuntu 24.04 "
            "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`); "
            "set execution.sandbox: none to run without it (not recommended)"
        )
    uid, net, ro, seen, env = sandbox_driver.decode(outs[0]["out"])
    problems = [
        *(["network reachable"] if net else []),
        *(["/usr writable"] if not ro else []),
        *[f"{p} visible" for p, s in zip(secret, seen) if s],
        *([f"environment leaks {env}"] if set(env) - {"HOME", "LC_CTYPE", "PWD"} else []),
    ]
    if problems:
        raise SandboxUnavailable("sandbox is not isolating: " + ", ".join(problems))
    log.info("sandbox ok: %s, startup %.3fs", profile.tool_version, run.usage.startup_s)
