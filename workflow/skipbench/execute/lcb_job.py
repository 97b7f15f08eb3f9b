"""LiveCodeBench's candidates as sandbox jobs: the program inside lcb_runtime's wrapper
(its evaluator's stdin patches, digit limit and call conventions), the per-test and
per-split limits and the judge, following nvidia-livecodebench's evaluator (files cited
in skipbench.benchmarks.livecodebench)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skipbench.benchmarks.livecodebench import TIMEOUT_S, LcbProblem, call_arguments, call_match, stdio_match
from skipbench.execute.sandbox_driver import encode

RUNTIME = Path(__file__).with_name("lcb_runtime.py")  # runs inside the sandbox, read as text


def sandbox_program(code: str, p: LcbProblem) -> tuple[str, str, list[list]]:
    """(program, entry point, argument lists): the candidate inside lcb_runtime's wrapper.

    The candidate's text is embedded as a string literal and parsed only inside the sandbox."""
    runtime = RUNTIME.read_text()
    program = f"{runtime}\n_SB_CODE = {code!r}\n_SB_FN_NAME = {p.fn_name!r}\n"
    if p.fn_name is None:
        return program, "__lcb_stdio__", [[inp] for inp, _ in p.tests]
    return program, "__lcb_call__", [call_arguments(inp) for inp, _ in p.tests]


def sandbox_job(p: LcbProblem, code: str):
    """(job for harness.run_tests, split budget, judge) of one candidate on every test.

    Per-test limit and the split's budget are LiveCodeBench's (6 s a test; its global
    timeout (6 + 1) * tests + 5, compute_code_generation_metrics.py:63); its guard, not
    EvalPlus's, runs in the sandbox (`exit()` and a patched `open()` stay usable)."""
    program, entry, args = sandbox_program(code, p)
    job = {"code": program, "entry_point": entry, "inputs": [encode(a) for a in args],
           "time_limits": [TIMEOUT_S] * len(args), "mode": "run", "output_mode": "value",
           "guard": "livecodebench"}  # fmt: skip
    match = call_match if p.fn_name else stdio_match

    def judge(i: int, output: Any) -> bool:
        return match(output, p.tests[i][1])

    return job, (TIMEOUT_S + 1) * len(args) + 5, judge
