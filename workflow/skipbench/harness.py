"""Run one program on one list of inputs in one sandbox and judge each output as it
arrives. Shared by the ground truth (canonical solutions, every output kept) and the execute
stage (candidates, stop at the first failure as EvalPlus's default fast check does).

Deadlines are the trusted side's, per message: the sandbox must be ready within
`STARTUP_S`, load the code within `load_s`, and answer test i within its time limit plus
`GRACE_S`; the whole split within `budget_s`. The driver's own alarm only makes a polite
timeout report possible; a candidate that swallows it is killed here.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from skipbench.sandbox import ProtocolError, SandboxProfile, SandboxRun, Usage
from skipbench.sandbox_driver import decode

STARTUP_S = 20.0  # bwrap + interpreter start; generous for a loaded 2-core machine
GRACE_S = 1.0  # per-test slack on top of the driver's alarm: pipe, JSON, scheduling


@dataclass
class Outcome:
    status: str  # pass | fail | timeout | load_error | unserialisable | sandbox_error
    tests_total: int
    tests_run: int = 0  # tests that produced a verdict (fast check stops at the first failure)
    tests_passed: int = 0
    first_fail: int | None = None
    error_type: str | None = None
    usage: Usage = field(default_factory=Usage)
    outputs: list[Any] = field(default_factory=list)  # decoded outputs, ground-truth runs only
    times: list[float] = field(default_factory=list)  # per-test seconds, measured inside


def run_tests(
    profile: SandboxProfile,
    slot: int,
    job: dict,
    load_s: float,
    budget_s: float,
    judge: Callable[[int, Any], bool] | None,
) -> Outcome:
    """`job`: code, entry_point, inputs (encoded), time_limits, mode, output_mode.
    `judge(i, output) -> accepted`; None keeps every output (ground truth)."""
    n = len(job["inputs"]) if job["mode"] == "run" else 1
    res = Outcome(status="pass", tests_total=n)
    job = dict(job, load_limit_s=load_s)
    cpu_s = math.ceil(load_s + budget_s) + 1
    t_end = time.perf_counter() + STARTUP_S + load_s + budget_s
    ready = loaded = False
    try:
        with SandboxRun(profile, job, slot, cpu_s) as run:
            res.usage = run.usage
            while res.tests_run < n:
                if not ready:
                    step = STARTUP_S
                elif not loaded:
                    step = load_s
                else:
                    step = job["time_limits"][res.tests_run] + GRACE_S
                msg = run.next_message(max(0.0, min(step, t_end - time.perf_counter())))
                if msg is None:  # output ended early: the process exited or was killed
                    if ready:
                        _fail(res, "fail", "Died", loaded)
                    else:
                        _fail(res, "sandbox_error", "SandboxStart", False)
                    break
                if not ready:
                    ready = msg.get("ready") is True
                    if not ready:
                        raise ProtocolError("no ready message")
                elif not loaded:
                    if "load_error" in msg:
                        _fail(res, "load_error", str(msg["load_error"])[:80], False)
                        break
                    loaded = msg.get("loaded") is True
                    if not loaded:
                        raise ProtocolError("no loaded message")
                elif not _judge(res, msg, judge):
                    break
            if res.status == "pass":  # the closing message carries the driver's peak memory
                try:
                    run.next_message(GRACE_S)
                except (TimeoutError, ProtocolError):
                    pass
    except TimeoutError:
        if ready:
            _fail(res, "timeout", "Timeout" if loaded else "LoadTimeout", loaded)
        else:
            _fail(res, "sandbox_error", "SandboxStart", False)
    except ProtocolError as e:
        _fail(res, "fail", f"Protocol({e})", loaded)
    if res.status == "fail" and res.error_type == "Died" and res.usage.signal == signal.SIGXCPU:
        res.status, res.error_type = "timeout", "CPULimit"
    return res


def _fail(res: Outcome, status: str, error: str, in_test: bool = True) -> None:
    """Record the first failure; `in_test`: it happened while test `tests_run` ran."""
    if res.status == "pass":
        res.status, res.error_type = status, error
        if in_test:
            res.first_fail = res.tests_run
            res.tests_run += 1


def _judge(res: Outcome, msg: dict, judge: Callable[[int, Any], bool] | None) -> bool:
    """Account for one driver message; False stops the run."""
    if "load_error" in msg:  # capture mode: check() itself failed
        _fail(res, "load_error", str(msg["load_error"])[:80], False)
        return False
    if "captured" in msg:
        res.outputs.append(decode(msg["captured"]))
        res.tests_run += 1
        return True
    if msg.get("i") != res.tests_run:
        raise ProtocolError("out of order")
    if msg.get("timeout") is True:
        _fail(res, "timeout", "Timeout")
        return False
    if "unserialisable" in msg:
        _fail(res, "unserialisable", str(msg["unserialisable"])[:80])
        return False
    if "error" in msg:
        _fail(res, "fail", str(msg["error"])[:80])
        return False
    if "out" not in msg:
        raise ProtocolError("unknown message")
    try:
        value = decode(msg["out"])
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError("bad value") from None
    if judge is None:
        res.outputs.append(value)
        t = msg.get("t")
        res.times.append(float(t) if type(t) in (int, float) else float("nan"))
    elif not judge(res.tests_run, value):
        _fail(res, "fail", "WrongOutput")
        return False
    res.tests_run += 1
    res.tests_passed += 1
    return True
