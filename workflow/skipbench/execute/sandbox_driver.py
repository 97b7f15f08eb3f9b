"""Runs untrusted code inside the sandbox. Standard library only.

Its source is handed to `python -I -S -c`, so nothing of the project is mounted in the
sandbox. The job arrives as one JSON line on stdin. Two processes:

  - the relay (this process) keeps the result channel (the original stdout), applies
    the limits, makes itself non-dumpable (so /proc/<pid>/fd and ptrace cannot reach it
    from a sibling) and forks
  - the runner, which closes every fd but one pipe to the relay, then loads the candidate
    and calls it. Candidate code runs only here: it never holds the result channel nor
    shares the relay's memory. The relay reads each frame on that pipe as "what the test
    it waits for did", so a forged frame can at most claim a value, judged outside.

The relay times each test itself, from the start of the call to the last byte of its
encoded value (the runner encodes inside the timed region: encoding may call the value's
own methods), with a transfer allowance proportional to the value's size, and kills the
runner past it. It writes messages (one JSON line each, a payload of `n` raw bytes after
it where `n` is given):
  {"ready": true}                         relay started, limits applied
  {"load_error": "SyntaxError"}           code did not exec / entry point missing
  {"loaded": true}                        code loaded, tests start
  {"i": 3, "returned": true, "t": 0.01, "n": 17}  + 17 bytes: test 3's value (tagged JSON,
                                          skipbench/execute/values.py); t: the call's own seconds
  {"i": 3, "error": "ZeroDivisionError"}  test 3 raised
  {"i": 3, "timeout": true}               test 3 hit its limit (or the split its budget)
  {"i": 3, "unserialisable": "Foo"}       test 3 returned a non-plain value
  {"bad_frame": "..."}                    the runner sent something that is not a frame
  {"captured": true, "n": 99}             + 99 bytes, capture mode only: the args check() used
  {"done": true, "peak_kb": 1234}
"""

import io
import json
import os
import resource
import select
import signal
import struct
import sys
import time

try:  # as a library module; inside the sandbox values.py's source runs ahead of this one
    from skipbench.execute.values import Unserialisable, decode, encode
except ImportError:
    pass

FRAME = struct.Struct(">cI")  # runner -> relay: kind, payload length
TRANSFER_BPS = 8 << 20  # a value's bytes may take size / this on top of the test's limit (per hop)
EVALPLUS_FRAMES = 28  # `evalplus.evaluate` calls the candidate 28 frames deep (counting its own)


def transfer_s(n):
    """The transfer allowance of an n-byte value: proportional, no flat part."""
    return n / TRANSFER_BPS


def _apply_limits(lim):
    mb = 1 << 20
    for res, value in ((resource.RLIMIT_AS, lim["memory_mb"] * mb), (resource.RLIMIT_DATA, lim["memory_mb"] * mb),
                       (resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_FSIZE, lim["fsize_mb"] * mb),
                       (resource.RLIMIT_NOFILE, lim["nofile"]), (resource.RLIMIT_NPROC, lim["nproc"]),
                       (resource.RLIMIT_CORE, 0)):  # fmt: skip
        resource.setrlimit(res, (value, value))


def _undumpable():
    """PR_SET_DUMPABLE 0: /proc/<relay>/{fd,mem} and ptrace are closed to the runner."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")


def _output(value, mode):
    # MBPP "output not none" tasks (EvalPlus) compare only whether a result exists: the
    # ground truth is `value is not None`; a candidate's bool is compared as it is.
    if mode == "is_not_none" or (mode == "not_none" and type(value) is not bool):
        return value is not None
    return value


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main():
    out = os.dup(1)
    job = json.loads(sys.stdin.readline())
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    _apply_limits(job["limits"])
    _undumpable()

    def send(obj, payload=b""):
        _write_all(out, json.dumps(obj).encode() + b"\n" + payload)

    send({"ready": True})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the runner: nothing of the relay's channel stays open here
        os.setpgid(0, 0)
        os.closerange(3, w)
        os.closerange(w + 1, 1 << 16)
        try:
            _runner(job, w)
        finally:  # whatever happened, never return into the relay's code
            os._exit(0)
    os.close(w)
    try:
        _relay(job, _Frames(r, job["limits"]["output_mb"] << 20), send)
    finally:  # the runner's group, and the runner itself in case it had no group yet
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os.waitpid(pid, 0)
    send({"done": True, "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss})


class _BadFrame(Exception):
    pass


class _Frames:
    """Frames from the runner, read against deadlines; None at end of stream."""

    def __init__(self, fd, max_bytes):
        self.fd, self.max = fd, max_bytes
        self.buf = bytearray()

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.fd, min(1 << 20, max(n - len(self.buf), 1 << 16)))
            if not chunk:
                return False
            self.buf += chunk
        return True

    def next(self, deadline, per_byte=False):
        """The next frame, whole by `deadline` (+ the transfer allowance of its size when
        `per_byte`); raises TimeoutError past it."""
        if not self._fill(FRAME.size, deadline):
            if self.buf:
                raise _BadFrame("truncated")
            return None, None
        kind, n = FRAME.unpack_from(self.buf)
        if n > self.max:
            raise _BadFrame("too large")
        if not self._fill(FRAME.size + n, deadline + (transfer_s(n) if per_byte else 0.0)):
            raise _BadFrame("truncated")
        body = bytes(self.buf[FRAME.size:FRAME.size + n])
        del self.buf[:FRAME.size + n]
        return kind, body


def _name(body):
    return body[:80].decode("utf-8", "replace")


def _relay(job, frames, send):
    try:
        _relay_tests(job, frames, send)
    except _BadFrame as e:
        send({"bad_frame": str(e)})


def _relay_tests(job, frames, send):
    split_end = time.monotonic() + job["load_limit_s"]  # the split's budget, load included
    try:
        kind, body = frames.next(split_end)
    except TimeoutError:
        kind, body = b"E", b"Timeout"
    if kind in (None, b"E"):
        send({"load_error": _name(body) if kind else "Died"})
        return
    if kind != b"L":
        raise _BadFrame("expected loaded")
    send({"loaded": True})
    if job["mode"] == "capture":
        try:
            kind, body = frames.next(min(time.monotonic() + job["time_limits"][0], split_end), per_byte=True)
        except TimeoutError:
            send({"load_error": "capture:Timeout"})
            return
        if kind == b"C":
            send({"captured": True, "n": len(body)}, body)
        elif kind == b"E":
            send({"load_error": "capture:" + _name(body)})
        elif kind is not None:
            raise _BadFrame("expected captured")
        return
    for i, limit in enumerate(job["time_limits"]):
        # From the call to the value's last byte: its limit (the split's end at most),
        # then the transfer allowance of the size announced.
        try:
            kind, body = frames.next(min(time.monotonic() + limit, split_end), per_byte=True)
        except TimeoutError:
            send({"i": i, "timeout": True})
            return
        if kind is None:
            return  # died: the trusted side sees the stream end
        if kind == b"X":
            send({"i": i, "error": _name(body)})
            return
        if kind == b"U":
            send({"i": i, "unserialisable": _name(body)})
            return
        if kind != b"V" or len(body) < 8:
            raise _BadFrame("expected value")
        value = memoryview(body)[8:]
        send({"i": i, "returned": True, "t": struct.unpack_from(">d", body)[0], "n": len(value)}, value)


def _frame(w, kind, body=b"", head=b""):
    """One frame of `head` + `body`; a big body is written as it is, not copied."""
    if len(body) < 1 << 16:
        _write_all(w, FRAME.pack(kind, len(head) + len(body)) + head + body)
    else:
        _write_all(w, FRAME.pack(kind, len(head) + len(body)) + head)
        _write_all(w, body)


def _dumps(value):
    return json.dumps(value, allow_nan=True).encode()


def _runner(job, w):
    sys.path[:0] = job.get("sys_path", [])
    args = [decode(a) for a in job["inputs"]]
    for name in job.get("importable", []):  # EvalPlus's process has numpy loaded before the guard
        if name in job["code"]:
            try:
                __import__(name)
            except BaseException:  # noqa: BLE001 - the candidate's own import reports it
                pass
    flavour = job.get("guard", "evalplus")
    _guard(job["limits"]["memory_mb"] << 20, job["code"], flavour)
    if flavour == "evalplus":  # the candidate's stack headroom and stdio as under EvalPlus
        _at_depth(EVALPLUS_FRAMES - 2, _load_and_run, job, args, w, _swallowed)  # + _swallowed's frame
    else:
        _load_and_run(job, args, w, lambda call, *a: call(*a))


def _frames():
    f, n = sys._getframe(1), 0
    while f:
        f, n = f.f_back, n + 1
    return n


def _at_depth(n, fn, *args):
    """fn(*args) with fn's frame the n-th of the stack (EvalPlus's process is that deep)."""
    return fn(*args) if _frames() >= n - 1 else _at_depth(n, fn, *args)


class _WriteOnly(io.StringIO):
    """EvalPlus's WriteOnlyStringIO (evalplus/eval/utils.py:81-95): no fileno, no buffer, no reading."""

    def read(self, *args, **kwargs):
        raise OSError

    readline = readlines = read

    def readable(self, *args, **kwargs):
        return False


def _swallowed(call, *args):
    """EvalPlus's swallow_io (evalplus/eval/utils.py:34-39): stdout, stderr and stdin are
    one write-only string buffer while candidate code runs."""
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout = sys.stderr = sys.stdin = _WriteOnly()
    try:
        return call(*args)
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved


def _load_and_run(job, args, w, swallowed):
    env = {}  # as EvalPlus: no __name__ == "__main__", so main blocks do not run
    try:
        swallowed(exec, compile(job["code"], "<candidate>", "exec"), env)
        fn = env[job["entry_point"]]
        if not callable(fn):
            raise TypeError("entry point is not callable")
    except BaseException as e:  # noqa: BLE001 - anything the code does is a load error
        _frame(w, b"E", type(e).__name__.encode())
        return
    _frame(w, b"L")
    if job["mode"] == "capture":
        _capture(job, env, fn, w)
        return
    clock = time.perf_counter
    for a in args:
        # Encoding may run the value's own methods: it belongs to the timed region, which
        # the relay closes at the value's last byte.
        try:
            t0 = clock()
            value = swallowed(fn, *a)
            dt = clock() - t0
        except BaseException as e:  # noqa: BLE001 - SystemExit etc. count as a failed test
            _frame(w, b"X", type(e).__name__.encode())
            return
        try:
            body = swallowed(lambda: _dumps(encode(_output(value, job["output_mode"]))))
        except BaseException as e:  # noqa: BLE001 - whatever encoding ran: no plain value
            _frame(w, b"U", (str(e) if type(e) is Unserialisable else type(e).__name__)[:80].encode())
            return
        _frame(w, b"V", body, head=struct.pack(">d", dt))


def _guard(memory_bytes, code, flavour):
    """EvalPlus 0.3.1's `reliability_guard` (evalplus/eval/utils.py), applied before the candidate
    loads as EvalPlus does; "livecodebench": its own (testing_util.py:491-574, no memory limit)."""
    import builtins

    if flavour == "livecodebench":  # exit() raises SystemExit as site's does (-S leaves none); open() stays
        builtins.exit, builtins.quit, builtins.help = sys.exit, None, None
    else:
        if sys.platform != "darwin":
            resource.setrlimit(resource.RLIMIT_STACK, (memory_bytes, memory_bytes))
        builtins.exit = builtins.quit = builtins.help = builtins.open = None
    import faulthandler

    faulthandler.disable()
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename "
                 "renames truncate replace unlink fchmod fchown chmod chown chroot lchflags lchmod "
                 "lchown getcwd chdir").split():  # fmt: skip
        setattr(os, name, None)
    # ~12 ms per sandbox to import, so only for programs that name them (others will not call them).
    if "shutil" in code:
        import shutil

        shutil.rmtree = shutil.move = shutil.chown = None
    if "subprocess" in code or "popen" in code or "shutil" in code:
        import subprocess

        subprocess.Popen = None
    sys.modules.update(dict.fromkeys(("ipdb", "joblib", "resource", "psutil", "tkinter")))


def _capture(job, env, fn, w):
    """Original HumanEval: run check(candidate) with a candidate that records its args
    and answers with the canonical solution, so asserts, loops and seeded random inputs
    all yield concrete inputs. Runs only dataset code (prompt, canonical, test)."""
    import copy
    import random

    random.seed(0)
    seen = []

    def recorder(*args):
        seen.append(encode(list(copy.deepcopy(args))))
        return fn(*args)

    try:
        exec(compile(job["test"], "<test>", "exec"), env)
        env["check"](recorder)
    except BaseException as e:  # noqa: BLE001
        _frame(w, b"E", type(e).__name__.encode())
        return
    _frame(w, b"C", _dumps(seen))


if __name__ == "__main__":
    main()
