"""Ground truth: expected outputs and reference times from the canonical solutions.

Canonical solutions are dataset code, so they run in the sandbox too; only plain
values come back. The cache is a JSON file in the tagged encoding (never a pickle: a
pickle runs code when loaded) kept under the results tree, which no sandbox mounts. It
is keyed by the dataset's hash and the driver's source, and filled task by task.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
from skipbench.progress import track

from skipbench.benchmarks.tasks import Benchmark, Task
from skipbench.execute.harness import run_tests
from skipbench.execute.sandbox import DRIVER_SOURCE, SandboxProfile
from skipbench.execute.slots import lease_uids
from skipbench.io import write_json
from skipbench.execute.values import decode, encode

log = logging.getLogger(__name__)

GT_TIME_LIMIT_S = 60.0  # per input, for canonical solutions (EvalPlus runs them unbounded)


@dataclass(frozen=True)
class SplitTruth:
    inputs: list  # encoded argument lists, as sent into the sandbox
    expected: list  # decoded expected outputs (never sent into the sandbox)
    ref_time: list[float]  # canonical seconds per input, measured inside the sandbox
    error: str | None = None  # the canonical solution failed every try: nothing to judge against


def output_mode(bench: Benchmark, task: Task, canonical: bool) -> str:
    if bench.family == "mbpp" and task.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
        return "is_not_none" if canonical else "not_none"
    return "value"


def cache_path(cache_dir: Path, bench: Benchmark) -> Path:
    driver = hashlib.sha256(DRIVER_SOURCE.encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{bench.dataset}-{bench.sha256[:16]}-driver{driver}.json"


RETRIES = 3  # a canonical run that fails (a loaded machine, a kill) is tried this often


def _retried(profile: SandboxProfile, uid: int | None, job: dict, budget_s: float, task_id: str):
    """The first passing run of a canonical job, or the last failure after RETRIES tries."""
    for attempt in range(1, RETRIES + 1):
        res = run_tests(profile, uid, job, budget_s=budget_s, judge=None)
        if res.status == "pass":
            if attempt > 1:
                log.warning("%s: canonical solution passed on try %d", task_id, attempt)
            return res
        log.warning("%s: canonical run %d/%d: %s (%s) at input %s", task_id, attempt, RETRIES,
                    res.status, res.error_type, res.first_fail)  # fmt: skip
    return res


def _canonical(profile: SandboxProfile, uid: int | None, bench: Benchmark, task: Task, inputs: list) -> dict:
    code = task.prompt + task.canonical_solution
    job = {"code": code, "entry_point": task.entry_point, "inputs": inputs,
           "time_limits": [GT_TIME_LIMIT_S] * len(inputs), "mode": "run",
           "output_mode": output_mode(bench, task, canonical=True)}  # fmt: skip
    res = _retried(profile, uid, job, GT_TIME_LIMIT_S * len(inputs), task.task_id)
    if res.status != "pass":  # recorded: this split's samples are scored groundtruth_error
        return {"inputs": inputs, "error": f"{res.status} ({res.error_type}) at input {res.first_fail}"}
    return {"inputs": inputs, "expected": [encode(v) for v in res.outputs], "ref_time": res.times}


def _captured_inputs(profile: SandboxProfile, uid: int | None, task: Task) -> list | None:
    """Original HumanEval: the argument lists `check(candidate)` passes (see benchmarks.py)."""
    job = {"code": task.prompt + task.canonical_solution, "entry_point": task.entry_point,
           "test": task.test, "inputs": [], "time_limits": [GT_TIME_LIMIT_S],
           "mode": "capture", "output_mode": "value"}  # fmt: skip
    res = _retried(profile, uid, job, GT_TIME_LIMIT_S, task.task_id)
    if res.status != "pass" or not res.outputs or not res.outputs[0]:
        return None
    return [encode(args) for args in res.outputs[0]]


def _task_truth(profile: SandboxProfile, uid: int | None, bench: Benchmark, task: Task) -> dict:
    if bench.dataset == "humaneval":
        inputs = _captured_inputs(profile, uid, task)
        if inputs is None:
            return {"base": {"inputs": [], "error": "capturing test inputs failed"}}
        return {"base": _canonical(profile, uid, bench, task, inputs)}
    return {
        split: _canonical(profile, uid, bench, task, [encode(list(a)) for a in getattr(task, f"{split}_input")])
        for split in bench.splits
    }


def build_groundtruth(bench: Benchmark, profile: SandboxProfile, cache_dir: Path, threads: int = 1) -> dict[str, dict[str, SplitTruth]]:
    """task_id -> split -> SplitTruth for every task of `bench`, from cache where present."""
    path = cache_path(cache_dir, bench)
    cache = json.loads(path.read_text()) if path.exists() else {}
    todo = [t for t in bench.tasks if t.task_id not in cache]
    if todo:
        log.info("computing expected outputs for %d %s tasks in the sandbox", len(todo), bench.dataset)
        with lease_uids(profile.uid_base, max(1, threads)) as uids:
            slots: Queue[int | None] = Queue()
            for uid in uids:
                slots.put(uid)

            def one(task: Task) -> tuple[str, dict]:
                uid = slots.get()
                try:
                    return task.task_id, _task_truth(profile, uid, bench, task)
                finally:
                    slots.put(uid)

            with ThreadPoolExecutor(max(1, threads)) as pool:
                for task_id, entry in track(pool.map(one, todo), total=len(todo), desc=f"ground truth {bench.dataset}",
                                            unit="task"):
                    cache[task_id] = entry
        # A canonical solution that failed every try is not cached: the next run tries again.
        write_json(path, {k: v for k, v in cache.items() if not any("error" in e for e in v.values())})
    return {t.task_id: {split: _split_truth(e) for split, e in cache[t.task_id].items()} for t in bench.tasks}


def _split_truth(e: dict) -> SplitTruth:
    if "error" in e:
        return SplitTruth(e["inputs"], [], [], error=e["error"])
    return SplitTruth(e["inputs"], [decode(v) for v in e["expected"]], e["ref_time"])
