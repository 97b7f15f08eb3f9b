"""Reading an EvalPlus `samples.jsonl` (ours or another tool's) and execute's partial
journal. Both are untrusted input: every line is checked before any sandbox work, and
each problem is reported as `file:line: what`."""

from __future__ import annotations

import json
from pathlib import Path

from skipbench.benchmarks.tasks import Benchmark
from skipbench.io import JsonlError, jsonl_objects


class SamplesError(ValueError):
    pass


def _sample(s: dict, known: set[str] | None, dataset: str) -> str | None:
    """What is wrong with one parsed sample, or None. A solution that merely does not compile
    (a NUL byte, a lone surrogate) is not wrong here: it is scored a failure, as EvalPlus does."""
    tid = s.get("task_id")
    if type(tid) is not str:
        return f"task_id must be a string, not {type(tid).__name__}"
    if known is not None and tid not in known:
        return f"task {tid} is not among the selected {dataset} tasks"
    if "solution" not in s and "completion" not in s:
        return f"sample of {tid} has neither solution nor completion"
    for key in ("solution", "completion"):
        if key in s and type(s[key]) is not str:
            return f"{key} of {tid} must be a string, not {type(s[key]).__name__}"
    sid = s.get("sample_id")
    if sid is not None and (type(sid) is not int or not 0 <= sid < 2**31):
        return f"sample_id must be an integer in [0, 2^31), not {sid!r}"[:200]
    return None


def check_samples(path: Path, known: set[str] | None, dataset: str) -> tuple[list[dict], list[str]]:
    """(samples with `sample_id` filled in (EvalPlus's completion_id: per-task order in the
    file where absent), "file:line: what" of every bad line). `known`: the task ids a sample
    may name (None: any, while the dataset is not downloaded). Raises JsonlError for a file
    that cannot be read."""
    counter: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    out, errors = [], []
    for where, s in jsonl_objects(path):
        if isinstance(s, JsonlError):
            errors.append(str(s))
            continue
        if (problem := _sample(s, known, dataset)) is not None:
            errors.append(f"{where}: {problem}")
            continue
        tid, lineno = s["task_id"], int(where.rsplit(":", 1)[1])
        sid = s.get("sample_id", counter.get(tid, 0))
        counter[tid] = counter.get(tid, 0) + 1
        if (tid, sid) in seen:
            errors.append(f"{where}: sample {sid} of {tid} already given on line {seen[(tid, sid)]}")
            continue
        seen[(tid, sid)] = lineno
        out.append(dict(s, sample_id=sid))
    return out, errors


def listing(errors: list[str]) -> str:
    """The first 10 problems, one a line."""
    more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
    return "bad lines:\n  " + "\n  ".join(errors[:10]) + more


def read_samples(path: Path, bench: Benchmark) -> list[dict]:
    """The samples of `bench`'s selected tasks (check_samples); raises SamplesError naming
    file:line of every bad line."""
    try:
        samples, errors = check_samples(path, {t.task_id for t in bench.tasks}, bench.dataset)
    except JsonlError as e:
        raise SamplesError(str(e)) from None
    if errors:
        raise SamplesError(f"{path}: {listing(errors)}")
    return samples


def read_journal(path: Path) -> list[dict]:
    """Rows of a partial journal; a torn or garbled line (a kill or a full disk while
    appending) is skipped: that run is simply done again."""
    rows = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw)
            except Exception:  # noqa: BLE001 - torn write: redo that row
                continue
            if type(row) is dict:
                rows.append(row)
    return rows
