"""Reading an EvalPlus `samples.jsonl` (ours or another tool's) and execute's partial
journal. Both are untrusted input: every line is checked before any sandbox work, and
each problem is reported as `file:line: what`."""

from __future__ import annotations

import json
from pathlib import Path

from skipbench.benchmarks import Benchmark


class SamplesError(ValueError):
    pass


def _sample(path: Path, lineno: int, line: str, known: set[str], dataset: str) -> dict:
    where = f"{path}:{lineno}"
    try:
        s = json.loads(line)
    except Exception as e:  # noqa: BLE001 - recursion, unicode, anything: the file is at fault
        raise SamplesError(f"{where}: not a JSON line ({type(e).__name__})") from None
    if type(s) is not dict:
        raise SamplesError(f"{where}: a sample is a JSON object, not {type(s).__name__}")
    tid = s.get("task_id")
    if type(tid) is not str:
        raise SamplesError(f"{where}: task_id must be a string")
    if tid not in known:
        raise SamplesError(f"{where}: task {tid} is not among the selected {dataset} tasks")
    if "solution" not in s and "completion" not in s:
        raise SamplesError(f"{where}: sample of {tid} has neither solution nor completion")
    for key in ("solution", "completion"):
        if key in s and type(s[key]) is not str:
            raise SamplesError(f"{where}: {key} of {tid} must be a string, not {type(s[key]).__name__}")
        if key in s and "\x00" in s[key]:
            raise SamplesError(f"{where}: {key} of {tid} contains a NUL byte")
    sid = s.get("sample_id")
    if sid is not None and (type(sid) is not int or not 0 <= sid < 2**31):
        raise SamplesError(f"{where}: sample_id must be an integer in [0, 2^31), not {sid!r}"[:200])
    return s


def read_samples(path: Path, bench: Benchmark) -> list[dict]:
    """Samples of the selected tasks with `sample_id` filled in (EvalPlus's completion_id:
    per-task order in the file where absent). Raises SamplesError naming file and line."""
    known = {t.task_id for t in bench.tasks}
    counter: dict[str, int] = {}
    seen: dict[tuple[str, int], int] = {}
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SamplesError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        s = _sample(Path(path), lineno, line, known, bench.dataset)
        tid = s["task_id"]
        sid = s.get("sample_id", counter.get(tid, 0))
        counter[tid] = counter.get(tid, 0) + 1
        if (tid, sid) in seen:
            raise SamplesError(f"{path}:{lineno}: sample {sid} of {tid} already given on line {seen[(tid, sid)]}")
        seen[(tid, sid)] = lineno
        out.append(dict(s, sample_id=sid))
    return out


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
