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

The relay times each test itself (kills the runner past its limit) and writes messages
(one JSON line each, a payload of `n` raw bytes after it where `n` is given):
  {"ready": true}                         relay started, limits applied
  {"load_error": "SyntaxError"}           code did not exec / entry point missing
  {"loaded": true}                        code loaded, tests start
  {"i": 3, "returned": true, "t": 0.01}   test 3 returned after t seconds (its value follows)
  {"i": 3, "n": 17}                       + 17 bytes: test 3's value, tagged JSON
  {"i": 3, "error": "ZeroDivisionError"}  test 3 raised
  {"i": 3, "timeout": true}               test 3 hit its limit
  {"i": 3, "unserialisable": "Foo"}       test 3 returned a non-plain value
  {"bad_frame": "..."}                    the runner sent something that is not a frame
  {"captured": true, "n": 99}             + 99 bytes, capture mode only: the args check() used
  {"done": true, "peak_kb": 1234}

Values use a tagged JSON encoding that keeps Python's types apart: lists and
str/int/float/bool/None map to JSON; tuple, set, frozenset, dict, complex, bytes,
Fraction, Decimal and ints past 1000 digits become {"<tag>": body} (see `encode`).
"""

import json
import os
import resource
import select
import signal
import struct
import sys
import time

# Exact built-in types only: a subclass (an int whose __eq__ is always true) is first
# rebuilt as its base type, so only plain values cross the pipe.
_SCALARS = (bool, int, float, str, type(None))
_CONTAINERS = {"tuple": tuple, "set": set, "frozenset": frozenset}
_BIG = 10**1000
FRAME = struct.Struct(">cI")  # runner -> relay: kind, payload length
ENCODE_S = 2.0  # after a test returned, its value must be framed within this (+ its limit)
TRANSFER_S = 60.0  # a framed value's bytes must arrive within this


class Unserialisable(Exception):
    pass


def encode(x, depth=0):
    if depth > 100:
        raise Unserialisable("nesting")
    t = type(x)
    if t is int and not -_BIG < x < _BIG:
        return {"bigint": format(x, "x")}  # decimal str() of huge ints is capped in 3.11+
    if t in _SCALARS:
        return x
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is complex:
        return {"complex": [x.real, x.imag]}
    if t is bytes:
        return {"bytes": x.hex()}
    for tag, base in _CONTAINERS.items():
        if t is base:
            return {tag: [encode(v, depth + 1) for v in x]}
    # Exact numeric types of the stdlib: only their numbers cross; the trusted side
    # rebuilds genuine objects, so a patched class here cannot act there.
    mod = sys.modules.get(t.__module__)
    if t.__module__ == "fractions" and t is getattr(mod, "Fraction", None):
        return {"fraction": [encode(int(x.numerator)), encode(int(x.denominator))]}
    if t.__module__ in ("decimal", "_decimal", "_pydecimal") and t.__name__ == "Decimal":
        return {"decimal": str(x)}
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.generic):  # numpy scalars compare as their value in EvalPlus
        return encode(x.item(), depth)
    # Subclasses of built-ins (namedtuple, defaultdict, numpy floats...) compare equal
    # to their base value in EvalPlus; rebuild them as the base type, then recheck.
    for base in (bool, int, float, str, list, tuple, dict, set, frozenset, complex, bytes):
        if isinstance(x, base):
            plain = base.__new__(base, x) if base in (int, float, str, complex, bytes, tuple, frozenset) else base(x)
            if type(plain) is base:
                return encode(plain, depth)
    raise Unserialisable(t.__name__)


def decode(v):
    t = type(v)
    if t in _SCALARS:
        return v
    if t is list:
        return [decode(x) for x in v]
    if t is dict and len(v) == 1:
        (tag, body), = v.items()
        if tag == "dict":
            return {decode(k): decode(x) for k, x in body}
        if tag == "complex":
            return complex(float(body[0]), float(body[1]))
        if tag == "bigint" and type(body) is str:
            return int(body, 16)
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "fraction":
            import fractions

            n, d = decode(body[0]), decode(body[1])
            if type(n) is int and type(d) is int:
                return fractions.Fraction(n, d)
        if tag == "decimal" and type(body) is str:
            import decimal

            return decimal.Decimal(body)
        if tag in _CONTAINERS and type(body) is list:
            return _CONTAINERS[tag](decode(x) for x in body)
    raise ValueError(f"bad encoded value: {str(v)[:80]}")


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

    def next(self, deadline, body_deadline=None):
        if not self._fill(FRAME.size, deadline):
            if self.buf:
                raise _BadFrame("truncated")
            return None, None
        kind, n = FRAME.unpack_from(self.buf)
        if n > self.max:
            raise _BadFrame("too large")
        if not self._fill(FRAME.size + n, body_deadline or deadline):
            raise _BadFrame("truncated")
        body = bytes(self.buf[FRAME.size:FRAME.size + n])
        del self.buf[:FRAME.size + n]
        return kind, body


def _name(body):
    return body[:80].decode("utf-8", "replace")


def _relay(job, frames, send):
    try:
        _relay_tests(job, frames, send)
    except (_BadFrame, TimeoutError) as e:  # TimeoutError: a frame's body did not follow its header
        send({"bad_frame": str(e) or "stalled"})


def _relay_tests(job, frames, send):
    try:
        kind, body = frames.next(time.monotonic() + job["load_limit_s"])
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
            kind, body = frames.next(time.monotonic() + job["time_limits"][0])
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
        try:
            kind, body = frames.next(time.monotonic() + limit)
        except TimeoutError:
            send({"i": i, "timeout": True})
            return
        if kind is None:
            return  # died: the trusted side sees the stream end
        if kind == b"X":
            send({"i": i, "error": _name(body)})
            return
        if kind != b"R" or len(body) != 8:
            raise _BadFrame("expected returned")
        send({"i": i, "returned": True, "t": struct.unpack(">d", body)[0]})
        now = time.monotonic()
        try:
            kind, body = frames.next(now + limit + ENCODE_S, now + TRANSFER_S)
        except TimeoutError:
            send({"i": i, "timeout": True})
            return
        if kind == b"U":
            send({"i": i, "unserialisable": _name(body)})
            return
        if kind is None:
            return
        if kind != b"V":
            raise _BadFrame("expected value")
        send({"i": i, "n": len(body)}, body)


def _frame(w, kind, body=b""):
    _write_all(w, FRAME.pack(kind, len(body)) + body)


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
    _guard(job["limits"]["memory_mb"] << 20, job["code"], job.get("guard", "evalplus"))
    env = {}  # as EvalPlus: no __name__ == "__main__", so main blocks do not run
    try:
        exec(compile(job["code"], "<candidate>", "exec"), env)
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
        try:
            t0 = clock()
            value = fn(*a)
            dt = clock() - t0
        except BaseException as e:  # noqa: BLE001 - SystemExit etc. count as a failed test
            _frame(w, b"X", type(e).__name__.encode())
            return
        _frame(w, b"R", struct.pack(">d", dt))
        try:
            body = _dumps(encode(_output(value, job["output_mode"])))
        except (Unserialisable, RecursionError, ValueError, OverflowError) as e:
            _frame(w, b"U", str(e)[:80].encode())
            return
        _frame(w, b"V", body)


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
