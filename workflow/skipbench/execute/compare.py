"""Output comparison on the trusted side, following EvalPlus 0.3.1 (`evalplus/eval/__init__.py`,
`unsafe_execute`) rule for rule, but on plain decoded values: the candidate's object never
reaches this process, so an always-equal `__eq__` or a patched `numpy.allclose` cannot act.

Rules: exact `out == exp`; MBPP special oracles by entry point (Mbpp/164 always true,
Mbpp/295 also 0, Mbpp/581 and Mbpp/558 by reference formulas, set equality for the
listed tasks, "not None" tasks compare booleans, done by the driver); HumanEval/32
`find_zero` checks |poly(xs, out)| <= atol; otherwise, if not exact and atol != 0 (an
expected float or list of floats forces atol 1e-6), same type, same length and
`np.allclose(out, exp, rtol=1e-7, atol=atol)`.

Known defect, handled on purpose: in EvalPlus 0.3.1 the find_zero branch `continue`s past
the bookkeeping that marks a test passed, so every solution of HumanEval/32, the canonical
one included, fails there. Here the intended oracle applies (|poly(xs, out)| <= atol, the
dataset's atol 1e-4), so a correct root finder passes; the parity test excludes nothing
else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from evalplus.eval._special_oracle import (
    MBPP_OUTPUT_SET_EQ_TASKS,
    _digit_distance_nums,
    _poly,
    _surface_Area,
)
from skipbench.execute.values import hashes_spread


def is_floats(x: Any) -> bool:
    """EvalPlus's test for a float-valued expected output (a float, or a non-empty
    list/tuple of floats)."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


# The oracles that read the test's input; every other task is judged on (out, exp) alone.
NEEDS_INPUT = {("mbpp", "surface_Area"), ("mbpp", "digit_distance_nums"), ("humaneval", "find_zero")}


def outputs_match(family: str, entry_point: str, inp: list | None, out: Any, exp: Any, atol: float) -> bool:
    """Whether candidate output `out` for input `inp` is accepted against `exp`.
    `family` is "humaneval" or "mbpp" (EvalPlus's dataset switch); `inp` may be None
    unless (family, entry_point) is in NEEDS_INPUT."""
    try:
        return _match(family, entry_point, inp, out, exp, atol)
    except Exception:  # noqa: BLE001 - EvalPlus counts any exception in the check as a failure
        return False


def _match(family: str, entry_point: str, inp: list, out: Any, exp: Any, atol: float) -> bool:
    exact = out == exp
    if family == "mbpp":
        if entry_point == "are_equivalent":  # Mbpp/164
            return True
        if entry_point == "sum_div":  # Mbpp/295
            exact = exact or out == 0
        elif entry_point == "surface_Area":  # Mbpp/581
            exact = exact or abs(out - _surface_Area(*inp)) <= atol
        elif entry_point == "digit_distance_nums":  # Mbpp/558
            exact = exact or out == _digit_distance_nums(*inp)
        elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:  # hash-colliding elements would make set() quadratic
            exact = hashes_spread(out) and set(out) == set(exp)
    if family == "humaneval" and entry_point == "find_zero":  # HumanEval/32: any root
        return bool(abs(_poly(*inp, out)) <= atol)
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        if type(out) is not type(exp):
            return False
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False
        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    return bool(exact)
