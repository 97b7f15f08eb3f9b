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

from skipbench.benchmarks import Benchmark, Task
from skipbench.harness import run_tests
from skipbench.io import write_json
from skipbench.sandbox import DRIVER_SOURCE, SandboxProfile
from skipbench.sandbox_driver import decode, encode

log = logging.getLogger(__name__)

GT_TIME_LIMIT_S = 60.0  # per input, for canonical solutions (EvalPlus runs them unbounded)


@dataclass(frozen=True)
class SplitTruth:
    inputs: list  # encoded argument lists, as sent into the sandbox
    expected: list  # decoded expected outputs (never sent into the sandbox)
    ref_time: list[float]  # canonical seconds per input, measured inside the sandbox


def output_mode(bench: Benchmark, task: Task, canonical: bool) -> str:
    if bench.family == "mbpp" and task.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
        return "is_not_none" if canonical else "not_none"
    return "value"


def cache_path(cache_dir: Path, bench: Benchmark) -> Path:
    driver = hashlib.sha256(DRIVER_SOURCE.encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{bench.dataset}-{bench.sha256[:16]}-driver{driver}.json"


def _canonical(profile: SandboxProfile, slot: int, bench: Benchmark, task: Task, inputs: list) -> dict:
    code = task.prompt + task.canonical_solution
    job = {"code": code, "entry_point": task.entry_point, "inputs": inputs,
           "time_limits": [GT_TIME_LIMIT_S] * len(inputs), "mode": "run",
           "output_mode": output_mode(bench, task, canonical=True)}  # fmt: skip
    res = run_tests(profile, slot, job, load_s=30.0, budget_s=GT_TIME_LIMIT_S * len(inputs), judge=None)
    if res.status != "pass":
        raise RuntimeError(f"{task.task_id}: canonical solution {res.status} ({res.error_type}) "
                           f"at input {res.first_fail}")  # fmt: skip
    return {"inputs": inputs, "expected": [encode(v) for v in res.outputs], "ref_time": res.times}


def _captured_inputs(profile: SandboxProfile, slot: int, task: Task) -> list:
    """Original HumanEval: the argument lists `check(candidate)` passes (see benchmarks.py)."""
    job = {"code": task.prompt + task.canonical_solution, "entry_point": task.entry_point,
           "test": task.test, "inputs": [], "time_limits": [GT_TIME_LIMIT_S],
           "mode": "capture", "output_mode": "value"}  # fmt: skip
    res = run_tests(profile, slot, job, load_s=30.0, budget_s=GT_TIME_LIMIT_S, judge=None)
    if res.status != "pass" or not res.outputs or not res.outputs[0]:
        raise RuntimeError(f"{task.task_id}: capturing test inputs failed: {res.status} {res.error_type}")
    return [encode(args) for args in res.outputs[0]]


def _task_truth(profile: SandboxProfile, slot: int, bench: Benchmark, task: Task) -> dict:
    if bench.dataset == "humaneval":
        return {"base": _canonical(profile, slot, bench, task, _captured_inputs(profile, slot, task))}
    return {
        split: _canonical(profile, slot, bench, task, [encode(list(a)) for a in getattr(task, f"{split}_input")])
        for split in bench.splits
    }


def build_groundtruth(bench: Benchmark, profile: SandboxProfile, cache_dir: Path, threads: int = 1) -> dict[str, dict[str, SplitTruth]]:
    """task_id -> split -> SplitTruth for every task of `bench`, from cache where present."""
    path = cache_path(cache_dir, bench)
    cache = json.loads(path.read_text()) if path.exists() else {}
    todo = [t for t in bench.tasks if t.task_id not in cache]
    if todo:
        log.info("computing expected outputs for %d %s tasks in the sandbox", len(todo), bench.dataset)
        slots: Queue[int] = Queue()
        for k in range(max(1, threads)):
            slots.put(k)

        def one(task: Task) -> tuple[str, dict]:
            slot = slots.get()
            try:
                return task.task_id, _task_truth(profile, slot, bench, task)
            finally:
                slots.put(slot)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            for task_id, entry in track(pool.map(one, todo), total=len(todo), desc=f"ground truth {bench.dataset}", unit="task"):
                cache[task_id] = entry
        write_json(path, cache)
    return {
        t.task_id: {
            split: SplitTruth(e["inputs"], [decode(v) for v in e["expected"]], e["ref_time"])
            for split, e in cache[t.task_id].items()
        }
        for t in bench.tasks
    }
