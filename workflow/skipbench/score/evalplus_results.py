"""EvalPlus-native output: `*_eval_results.json` as EvalPlus 0.3.1 writes it
(evalplus/evaluate.py, `evaluate()`: the `results` dict dumped at its end), so its own
tooling (`evalplus.evaluate --samples X.jsonl` finds `X_eval_results.json` and reports
pass@k from it) reads skipbench's verdicts.

Format: {"date": "%Y-%m-%d %H:%M", "hash": md5 of the dataset file (EvalPlus's
`get_human_eval_plus_hash`), "eval": {task_id: [{"task_id", "solution", "base_status",
"plus_status", "base_fail_tests", "plus_fail_tests"}, ...] in completion order}}.
Statuses are EvalPlus's "pass" | "fail" | "timeout" (plus_status null without plus
tests); skipbench's load_error / unserialisable / sandbox_error count as "fail", as
EvalPlus counts them. Fail tests follow EvalPlus's fast check: the one failing input.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from skipbench.benchmarks.tasks import Benchmark
from skipbench.execute import read_samples, solution_of
from skipbench.io import write_json

EVALPLUS_STATUS = {"pass": "pass", "timeout": "timeout"}  # everything else: "fail"


def _fail_tests(bench: Benchmark, task, split: str, row: dict | None) -> list:
    if row is None or row["status"] == "pass":
        return []
    inputs = task.base_input if split == "base" else task.plus_input
    i = row.get("first_fail_index")
    if i is None or pd.isna(i) or not 0 <= int(i) < len(inputs):
        return []  # failed before any test (load error, timeout): EvalPlus has no details either
    failed = [inputs[int(i)]]
    if bench.family == "mbpp":
        from evalplus.data.mbpp import mbpp_serialize_inputs  # tuples, sets, complex -> JSON

        failed = mbpp_serialize_inputs(task.task_id, failed)
    return failed


def eval_results(bench: Benchmark, samples: list[dict], execution: pd.DataFrame,
                 date: datetime | None = None) -> dict:  # fmt: skip
    """EvalPlus's results dict for `samples` (read_samples rows) judged in `execution` rows."""
    tasks = {t.task_id: t for t in bench.tasks}
    verdicts = {(r["task_id"], int(r["sample_id"]), r["split"]): r for r in execution.to_dict("records")}
    out: dict[str, list] = {}
    for s in sorted(samples, key=lambda s: (s["task_id"], s["sample_id"])):
        task = tasks[s["task_id"]]
        entry = {"task_id": task.task_id, "solution": solution_of(task, s)}
        for split in ("base", "plus"):
            row = verdicts.get((task.task_id, s["sample_id"], split))
            has = split in bench.splits
            entry[f"{split}_status"] = EVALPLUS_STATUS.get(row["status"], "fail") if has and row else None
            entry[f"{split}_fail_tests"] = _fail_tests(bench, task, split, row) if has else []
        out.setdefault(task.task_id, []).append(entry)
    return {
        "date": (date or datetime.now()).strftime("%Y-%m-%d %H:%M"),
        "hash": bench.md5,
        "eval": out,
    }


def write_eval_results(path, bench: Benchmark, samples_path, execution: pd.DataFrame) -> dict:
    results = eval_results(bench, read_samples(samples_path, bench), execution)
    write_json(path, results)
    return results


def eval_results_path(samples_path: str) -> str:
    """Where EvalPlus looks for a samples file's results: X.jsonl -> X_eval_results.json."""
    s = str(samples_path)
    return (s[: -len(".jsonl")] if s.endswith(".jsonl") else s) + "_eval_results.json"
