"""Run one program on one list of inputs in one sandbox and judge each output as it
arrives. Shared by the ground truth (canonical solutions, every output kept) and the execute
stage (candidates, stop at the first failure as EvalPlus's default fast check does).

The conversation with the sandbox's relay (sandbox_driver.py) is a strict sequence:
ready, then loaded or load_error, then per test i: returned + value (or error, timeout,
unserialisable), then done; in capture mode one captured message replaces the tests.
Any message out of its place, of another mode, with other keys or that does not parse
is a protocol failure (`protocol_error`), and a split passes only when every one of its
tests was judged here: tests_passed == tests_total.

Timing verdicts are the relay's: test i's time runs from its call to the last byte of its
encoded value, within its limit plus a transfer allowance proportional to the value's size
(`sandbox_driver.transfer_s`), and the split's budget, EvalPlus's min(timeout_s, sum of
per-test limits) + `SLACK_S`, load included. Deadlines here are the backstop: the sandbox
must be ready within `STARTUP_S`; every later message is waited for until the split's
remaining budget, plus `GRACE_S`, plus the transfer allowances of the values received (and
of the largest one a message may carry), never longer.

Values are decoded with `values.loads`' budget, derived from the byte cap: a value over it
is `unserialisable` (ValueBudget), one that does not decode a `protocol_error`.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from skipbench.execute.sandbox import ProtocolError, SandboxProfile, SandboxRun, Usage
from skipbench.execute.sandbox_driver import transfer_s
from skipbench.execute.values import ValueBudget, loads, max_nodes

STARTUP_S = 20.0  # bwrap + interpreter start; generous for a loaded 2-core machine
GRACE_S = 1.0  # per-test slack on top of the relay's own timer: pipe, JSON, scheduling
SLACK_S = 2.0  # EvalPlus 0.3.1 untrusted_check: timeout = min(cap, sum) + 1, join(timeout + 1)


@dataclass
class Outcome:
    status: str  # pass | fail | timeout | load_error | unserialisable | protocol_error | sandbox_error
    tests_total: int
    tests_run: int = 0  # tests that produced a verdict (fast check stops at the first failure)
    tests_passed: int = 0  # tests whose value was judged correct here
    first_fail: int | None = None
    error_type: str | None = None
    usage: Usage = field(default_factory=Usage)
    outputs: list[Any] = field(default_factory=list)  # decoded outputs, ground-truth runs only
    times: list[float] = field(default_factory=list)  # per-test seconds, measured inside


def run_tests(
    profile: SandboxProfile,
    uid: int | None,
    job: dict,
    budget_s: float,
    judge: Callable[[int, Any], bool] | None,
) -> Outcome:
    """`job`: code, entry_point, inputs (encoded), time_limits, mode, output_mode.
    `judge(i, output) -> accepted`; None keeps every output (ground truth)."""
    n = len(job["inputs"]) if job["mode"] == "run" else 1
    res = Outcome(status="pass", tests_total=n)
    job = dict(job, load_limit_s=budget_s + SLACK_S)
    try:
        with SandboxRun(profile, job, uid, math.ceil(budget_s + SLACK_S) + 1) as run:
            res.usage = run.usage
            _Conversation(run, job, budget_s, judge, res).converse()
    except ProtocolError as e:
        _fail(res, "protocol_error", f"Protocol({e})"[:80], False)
    except ValueBudget:  # a captured value over the budget
        _fail(res, "unserialisable", "ValueBudget", False)
    if res.status == "fail" and res.error_type == "Died" and res.usage.signal == signal.SIGXCPU:
        res.status, res.error_type = "timeout", "CPULimit"
    if res.status == "pass" and not res.tests_passed == res.tests_run == res.tests_total:
        res.status, res.error_type = "protocol_error", "Protocol(incomplete)"
    return res


def _fail(res: Outcome, status: str, error: str, in_test: bool = True) -> None:
    """Record the first failure; `in_test`: it happened while test `tests_run` ran."""
    if res.status == "pass":
        res.status, res.error_type = status, error
        if in_test:
            res.first_fail = res.tests_run
            res.tests_run += 1


def _shape(msg: dict, *keys: str) -> bool:
    return set(msg) == set(keys)


def _name(v: Any) -> str:
    if type(v) is not str:
        raise ProtocolError("bad name")
    return v[:80]


class _Conversation:
    def __init__(self, run: SandboxRun, job: dict, budget_s: float, judge, res: Outcome):
        self.run, self.job, self.budget_s, self.judge, self.res = run, job, budget_s, judge, res
        self.t_end = math.inf
        cap = run.profile.max_output_mb << 20
        self.max_nodes, self.max_transfer_s = max_nodes(cap), transfer_s(cap)

    def _next(self, step: float, carries_value: bool = False) -> tuple[dict, bytes | None] | None:
        """The next message, within `step` seconds and the split's end. The header of a
        message that may carry a value gets the transfer allowance of the largest one on top
        (the relay sends it once the value is whole, and holds that to its real size); its
        payload, and the split's end, get the allowance of its real size for both hops."""
        slack = self.max_transfer_s if carries_value else 0.0
        got = self.run.next_message(min(time.perf_counter() + step, self.t_end), slack)
        if got is not None and got[1] is not None:
            self.t_end += 2 * transfer_s(len(got[1]))
        return got

    def converse(self) -> None:
        res = self.res
        try:
            got = self._next(STARTUP_S)
        except TimeoutError:
            got = None
        if got is None:
            return _fail(res, "sandbox_error", "SandboxStart", False)
        if not _shape(got[0], "ready") or got[0]["ready"] is not True:
            raise ProtocolError("expected ready")
        self.t_end = time.perf_counter() + self.budget_s + SLACK_S + GRACE_S
        try:
            if self._load() and self._tests():
                self._done()
        except TimeoutError:
            _fail(res, "timeout", "Timeout" if self.loaded else "LoadTimeout", self.loaded)

    loaded = False

    def _load(self) -> bool:
        got = self._next(math.inf)
        if got is None:
            _fail(self.res, "fail", "Died", False)
            return False
        msg = got[0]
        if _shape(msg, "load_error"):
            _fail(self.res, "load_error", _name(msg["load_error"]), False)
            return False
        if not _shape(msg, "loaded") or msg["loaded"] is not True:
            raise ProtocolError("expected loaded")
        self.loaded = True
        return True

    def _tests(self) -> bool:
        if self.job["mode"] == "capture":
            return self._captured()
        for i, limit in enumerate(self.job["time_limits"]):
            if not self._test(i, limit):
                return False
        return True

    def _captured(self) -> bool:
        got = self._next(math.inf, carries_value=True)
        if got is None:
            _fail(self.res, "fail", "Died", False)
            return False
        msg, payload = got
        if _shape(msg, "load_error"):
            _fail(self.res, "load_error", _name(msg["load_error"]), False)
            return False
        if not _shape(msg, "captured", "n") or msg["captured"] is not True:
            raise ProtocolError("expected captured")
        self.res.outputs.append(self._value(payload))
        self.res.tests_run = self.res.tests_passed = 1
        return True

    def _test(self, i: int, limit: float) -> bool:
        res = self.res
        got = self._next(limit + GRACE_S, carries_value=True)
        if got is None:
            _fail(res, "fail", "Died")
            return False
        msg, payload = got
        if msg.get("i") != i or type(msg.get("i")) is not int:
            raise ProtocolError("out of order")
        if _shape(msg, "i", "timeout") and msg["timeout"] is True:
            _fail(res, "timeout", "Timeout")
            return False
        if _shape(msg, "i", "error"):
            _fail(res, "fail", _name(msg["error"]))
            return False
        if _shape(msg, "i", "unserialisable"):
            _fail(res, "unserialisable", _name(msg["unserialisable"]))
            return False
        if not (_shape(msg, "i", "returned", "t", "n") and msg["returned"] is True and type(msg["t"]) in (int, float)):
            raise ProtocolError("expected returned")
        try:
            value = self._value(payload)
        except ValueBudget:
            _fail(res, "unserialisable", "ValueBudget")
            return False
        if self.judge is None:
            res.outputs.append(value)
            res.times.append(float(msg["t"]))
        elif not self.judge(i, value):
            _fail(res, "fail", "WrongOutput")
            return False
        res.tests_run += 1
        res.tests_passed += 1
        return True

    def _value(self, payload: bytes) -> Any:
        """Decode a value payload within the budget; anything else that goes wrong is the
        sandbox's protocol failure."""
        try:
            return loads(payload, self.max_nodes)
        except ValueBudget:
            raise
        except Exception:  # noqa: BLE001 - recursion, overflow, memory, unicode, type errors
            raise ProtocolError("bad value") from None

    def _done(self) -> None:
        """The closing message carries the relay's peak memory; a missing one costs nothing."""
        try:
            got = self.run.next_message(time.perf_counter() + GRACE_S)
        except TimeoutError:
            return
        if got is not None and not (_shape(got[0], "done", "peak_kb") and got[0]["done"] is True):
            raise ProtocolError("expected done")
