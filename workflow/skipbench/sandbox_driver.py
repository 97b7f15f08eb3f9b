"""Runs untrusted code inside the sandbox. Standard library only.

Its source is handed to `python -I -S -c`, so nothing of the project is mounted in
the sandbox. The job arrives as one JSON line on stdin; results leave as JSON lines on
the original stdout, which is duplicated to a private fd before fds 0-2 are pointed at
/dev/null (so candidate prints cannot interleave with results). Nothing written here
decides pass or fail: the trusted side compares outputs it never sends in.

Protocol (one JSON object per line):
  {"ready": true}                             driver started, limits applied
  {"load_error": "SyntaxError"}               code did not exec / entry point missing
  {"loaded": true}                            code loaded, tests start
  {"i": 3, "out": <value>, "t": 0.01}         test 3 returned <value> in t seconds
  {"i": 3, "error": "ZeroDivisionError"}      test 3 raised
  {"i": 3, "timeout": true}                   test 3 hit its alarm
  {"i": 3, "unserialisable": "Foo"}           test 3 returned a non-plain value
  {"captured": [<args>, ...]}                 capture mode: the args check() used
  {"done": true}

Values use a tagged JSON encoding that keeps Python's built-in types apart:
lists and str/int/float/bool/None map to JSON; tuple, set, frozenset, dict, complex,
bytes become {"tuple": [...]}, {"set": [...]}, {"frozenset": [...]}, {"dict": [[k, v], ...]},
{"complex": [re, im]}, {"bytes": "hex"}; ints past 1000 digits {"bigint": "hex"}.
"""

import copy
import json
import os
import resource
import signal
import sys
import time

# Exact built-in types only: a subclass (an int whose __eq__ is always true) is first
# rebuilt as its base type, so only plain values cross the pipe.
_SCALARS = (bool, int, float, str, type(None))
_CONTAINERS = {"tuple": tuple, "set": set, "frozenset": frozenset}
_BIG = 10**1000


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
        if tag == "bigint":
            return int(body, 16)
        if tag == "bytes":
            return bytes.fromhex(body)
        if tag in _CONTAINERS:
            return _CONTAINERS[tag](decode(x) for x in body)
    raise ValueError(f"bad encoded value: {str(v)[:80]}")


class _Alarm(BaseException):
    """Raised by SIGALRM; BaseException so that `except Exception` in candidates misses it."""


def _on_alarm(signum, frame):
    raise _Alarm()


def _limit(res, value):
    if value is not None:
        resource.setrlimit(res, (value, value))


def _apply_limits(lim):
    mb = 1 << 20
    _limit(resource.RLIMIT_AS, lim["memory_mb"] * mb)
    _limit(resource.RLIMIT_CPU, lim["cpu_s"])
    _limit(resource.RLIMIT_FSIZE, lim["fsize_mb"] * mb)
    _limit(resource.RLIMIT_NOFILE, lim["nofile"])
    _limit(resource.RLIMIT_NPROC, lim["nproc"])
    _limit(resource.RLIMIT_CORE, 0)


def _output(value, mode):
    # MBPP "output not none" tasks (EvalPlus) compare only whether a result exists: the
    # ground truth is `value is not None`; a candidate's bool is compared as it is.
    if mode == "is_not_none" or (mode == "not_none" and type(value) is not bool):
        return value is not None
    return value


def main():
    out = os.fdopen(os.dup(1), "w")
    job = json.loads(sys.stdin.readline())
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _apply_limits(job["limits"])
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def emit(obj):
        try:
            line = json.dumps(obj, allow_nan=True)
        except (ValueError, OverflowError, RecursionError) as e:
            line = json.dumps({"i": obj.get("i"), "unserialisable": type(e).__name__})
        out.write(line + "\n")
        out.flush()

    emit({"ready": True})
    signal.signal(signal.SIGALRM, _on_alarm)
    env = {"__name__": "__main__"}
    try:
        signal.setitimer(signal.ITIMER_REAL, job["load_limit_s"])
        exec(compile(job["code"], "<candidate>", "exec"), env)
        fn = env[job["entry_point"]]
        if not callable(fn):
            raise TypeError("entry point is not callable")
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as e:  # noqa: BLE001 - anything the code does is a load error
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit({"load_error": "Timeout" if isinstance(e, _Alarm) else type(e).__name__})
        return
    emit({"loaded": True})

    if job["mode"] == "capture":
        _capture(job, env, fn, emit)
    else:
        _run(job, fn, emit)
    emit({"done": True, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
    out.close()


def _run(job, fn, emit):
    for i, enc in enumerate(job["inputs"]):
        args = decode(enc)
        try:
            signal.setitimer(signal.ITIMER_REAL, job["time_limits"][i])
            t0 = time.perf_counter()
            value = fn(*args)
            dt = time.perf_counter() - t0
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _Alarm:
            emit({"i": i, "timeout": True})
            return
        except BaseException as e:  # noqa: BLE001 - SystemExit etc. count as a failed test
            signal.setitimer(signal.ITIMER_REAL, 0)
            emit({"i": i, "error": type(e).__name__})
            continue
        try:
            emit({"i": i, "out": encode(_output(value, job["output_mode"])), "t": dt})
        except (Unserialisable, RecursionError) as e:
            emit({"i": i, "unserialisable": str(e)[:80]})


def _capture(job, env, fn, emit):
    """Original HumanEval: run check(candidate) with a candidate that records its args
    and answers with the canonical solution, so asserts, loops and seeded random inputs
    all yield concrete inputs. Runs only dataset code (prompt, canonical, test)."""
    import random

    random.seed(0)
    seen = []

    def recorder(*args):
        seen.append(encode(list(copy.deepcopy(args))))
        return fn(*args)

    try:
        signal.setitimer(signal.ITIMER_REAL, job["time_limits"][0])
        exec(compile(job["test"], "<test>", "exec"), env)
        env["check"](recorder)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as e:  # noqa: BLE001
        emit({"load_error": "capture:" + type(e).__name__})
        return
    emit({"captured": seen})


if __name__ == "__main__":
    main()
