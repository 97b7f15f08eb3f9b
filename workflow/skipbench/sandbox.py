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

import importlib.util
import json
import logging
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from skipbench import sandbox_driver, seccomp
from skipbench.proctable import descendants, tasks_of_uid, threads_of_uid, wait_gone
from skipbench.slots import kill_uid, lease_uids

log = logging.getLogger(__name__)

DRIVER_SOURCE = Path(sandbox_driver.__file__).read_text()


class SandboxUnavailable(RuntimeError):
    pass


class ProtocolError(RuntimeError):
    """The sandbox wrote something that is not a driver message (or too much of it)."""


MAX_HEADER = 1 << 16  # a relay header line is tiny; values travel as sized payloads


@dataclass(frozen=True)
class SandboxProfile:
    kind: str  # "bwrap" or "none"
    tool_version: str  # "bubblewrap 0.8.0", or "none"
    python: str  # interpreter run inside (the system one: stdlib plus `importable`)
    memory_mb: int  # RLIMIT_AS and RLIMIT_DATA per process (EvalPlus: 4 GiB)
    tmp_mb: int  # size of each writable tmpfs (/tmp, /dev/shm), also RLIMIT_FSIZE
    nofile: int  # RLIMIT_NOFILE
    nproc_extra: int  # processes/threads a candidate may add (RLIMIT_NPROC on top of ours)
    uid_base: int  # slot uids are leased from uid_base upwards when we are root
    max_output_mb: int  # size of one message (one test's output) before the sandbox is killed
    importable: tuple[str, ...] = ()  # packages mounted read-only inside (EvalPlus solutions import numpy)
    seccomp: str = "none"  # "deny-list <arch> (N syscalls)" or "none"

    def describe(self) -> str:
        return json.dumps(dict(asdict(self), enforced=self.enforced()), sort_keys=True)

    def enforced(self) -> list[str]:
        """The limits this profile enforces, for the result rows."""
        out = [f"rlimit_as={self.memory_mb}MiB", f"rlimit_fsize={self.tmp_mb}MiB", f"rlimit_nofile={self.nofile}",
               "rlimit_nproc", "wall_clock_kill"]  # fmt: skip
        if self.kind == "bwrap":
            out += ["namespaces", "ro_root", f"tmpfs_tmp={self.tmp_mb}MiB", f"tmpfs_dev_shm={self.tmp_mb}MiB", "ro_dev"]
        if self.seccomp != "none":
            out.append("seccomp")
        if os.geteuid() == 0:
            out.append("leased_uid")
        return out


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
    filt = "none"
    if kind == "bwrap" and exec_cfg.get("seccomp", True) and seccomp.supported():
        filt = f"deny-list {platform.machine()} ({len(seccomp.DENIED)} syscalls)"
    importable = tuple(exec_cfg.get("importable", ("numpy",)))
    for name in importable:
        _package_paths(name)  # fail early on a package that is not installed
    return SandboxProfile(
        kind=kind,
        tool_version=version,
        python=exec_cfg.get("python") or _default_python(),
        memory_mb=int(exec_cfg.get("memory_mb", 4096)),
        tmp_mb=int(exec_cfg.get("tmp_mb", 16)),
        nofile=int(exec_cfg.get("nofile", 64)),
        nproc_extra=int(exec_cfg.get("nproc_extra", 4)),
        uid_base=int(exec_cfg.get("uid_base", 61000)),
        max_output_mb=int(exec_cfg.get("max_output_mb", 64)),
        importable=importable,
        seccomp=filt,
    )


def _default_python() -> str:
    """The system interpreter of our Python version (stdlib only, readable by any uid);
    else the one we run on (its prefix is then mounted read-only too)."""
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return system if os.access(system, os.X_OK) else os.path.realpath(sys.executable)


SITE = "/opt/skipbench-site"  # where `importable` packages appear inside the sandbox


def _package_paths(name: str) -> list[Path]:
    """A top-level package's directory and its bundled-libraries sibling (numpy.libs)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"execution.importable: {name!r} is not an installed package")
    pkg = Path(list(spec.submodule_search_locations)[0]).resolve()
    libs = pkg.with_name(pkg.name + ".libs")
    return [pkg] + ([libs] if libs.is_dir() else [])


def _site_mounts(profile: SandboxProfile) -> list[str]:
    args = []
    for name in profile.importable:
        for p in _package_paths(name):
            args += ["--ro-bind", str(p), f"{SITE}/{p.name}"]
    return args


def _sys_path(profile: SandboxProfile) -> list[str]:
    if profile.kind == "bwrap":
        return [SITE] if profile.importable else []
    return sorted({str(_package_paths(n)[0].parent) for n in profile.importable})


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
        self._t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                self._argv(filt), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
        """Read what arrives before `deadline` into the buffer; False at end of output."""
        while self._sel.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            got = False
            for key, _ in self._sel.select(left):
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

    def next_message(self, timeout_s: float) -> tuple[dict, bytes | None] | None:
        """The next relay message and its payload; None at end of output. Raises
        TimeoutError when no header arrives in `timeout_s` (a payload gets its own
        transfer deadline: sending a big value is not the call's time), ProtocolError on
        anything that is not a well-formed message, whatever the bytes are."""
        line = self._line(time.perf_counter() + timeout_s)
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
            t0 = time.perf_counter()
            payload = self._payload(n, t0 + sandbox_driver.TRANSFER_S)
            self.transfer_s += time.perf_counter() - t0
        if msg.get("ready") is True and self.usage.startup_s != self.usage.startup_s:
            self.usage.startup_s = time.perf_counter() - self._t0
        if msg.get("done") is True and type(msg.get("peak_kb")) is int and 0 <= msg["peak_kb"] < 1 << 40:
            self.usage.peak_mb = msg["peak_kb"] / 1024
        return msg, payload

    transfer_s = 0.0  # seconds spent reading payloads, kept out of the split's budget

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
        u = self.usage
        u.wall_s = time.perf_counter() - self._t0
        u.cpu_s = ru.ru_utime + ru.ru_stime
        if os.WIFSIGNALED(status):
            u.signal = os.WTERMSIG(status)
        else:
            u.exit_code = os.WEXITSTATUS(status)


def check_sandbox(profile: SandboxProfile) -> None:
    """Refuse to run untrusted code unless the sandbox really isolates it."""
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
                got = run.next_message(15.0)
                if got is None or got[1] is not None:
                    value = got and json.loads(got[1])
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
    uid, net, ro, seen, env = sandbox_driver.decode(value)
    problems = [
        *(["network reachable"] if net else []),
        *(["/usr writable"] if not ro else []),
        *[f"{p} visible" for p, s in zip(secret, seen) if s],
        *([f"environment leaks {env}"] if set(env) - {"HOME", "LC_CTYPE", "PWD", "OMP_NUM_THREADS"} else []),
    ]
    if problems:
        raise SandboxUnavailable("sandbox is not isolating: " + ", ".join(problems))
    log.info("sandbox ok: %s, startup %.3fs", profile.tool_version, run.usage.startup_s)
