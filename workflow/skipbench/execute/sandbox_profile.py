"""What a sandbox is allowed: the profile (limits, interpreter, packages, seccomp) and the
bubblewrap mounts it implies. Recorded in every result row (`describe`)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from skipbench.execute import cgroup, seccomp


class SandboxUnavailable(RuntimeError):
    pass


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
    memory_cgroup: str = "none"  # "v1" | "v2": one group per sandbox, limit `cgroup_mb()`; "none" where not allowed

    def cgroup_mb(self) -> int:
        """The group's limit: the configured memory, both tmpfs, and the relay's own."""
        return self.memory_mb + 2 * self.tmp_mb + 64

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
        if self.memory_cgroup != "none":
            out.append(f"memory_cgroup={self.cgroup_mb()}MiB")
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
    group = cgroup.parent() if exec_cfg.get("memory_cgroup", True) else None
    return SandboxProfile(
        memory_cgroup=group[1] if group else "none",
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
