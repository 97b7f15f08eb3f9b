"""Stage 5, execute: every sample of an EvalPlus `samples.jsonl` against every test split,
one sandbox per (sample, split), judged here against ground truth that never enters it.

Samples are `{"task_id", "solution" | "completion"[, "sample_id"]}`; a completion is
appended to the task's prompt (EvalPlus's rule). Without `sample_id`, samples are
numbered per task in file order (EvalPlus's completion_id). Files made by other tools
work the same way.

Time limits follow EvalPlus: test i may take max(min_time_limit_s, time_factor *
canonical seconds on input i); a split may take at most min(timeout_s, sum of limits).
Slow machines lower scores under this rule, so every row records the settings.

Finished rows are appended to `<out>.partial.jsonl`; a killed run resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from queue import Queue

import pyarrow as pa

from skipbench.benchmarks.samples import read_journal, read_samples
from skipbench.benchmarks.tasks import Benchmark, Task, load_benchmark
from skipbench.execute.compare import NEEDS_INPUT, is_floats, outputs_match
from skipbench.execute.groundtruth import SplitTruth, build_groundtruth, output_mode
from skipbench.execute.harness import Outcome, run_tests
from skipbench.execute.lcb_job import sandbox_job
from skipbench.execute.sandbox import SandboxProfile, check_sandbox, make_profile
from skipbench.execute.slots import lease_uids
from skipbench.io import write_table
from skipbench.progress import track
from skipbench.execute.values import decode

log = logging.getLogger(__name__)

EXECUTE_SCHEMA = pa.schema([
    ("dataset", pa.string()),  # humaneval | humaneval_plus | mbpp_plus
    ("dataset_version", pa.string()),  # e.g. v0.1.10
    ("dataset_sha256", pa.string()),  # of the uncompressed dataset file
    ("task_id", pa.string()),
    ("sample_id", pa.int32()),  # from the samples file, else per-task order in it
    ("solution_sha256", pa.string()),  # of the full program that ran
    ("split", pa.string()),  # base | plus
    # pass | fail | timeout | load_error | unserialisable | protocol_error | sandbox_error | groundtruth_error
    # (pass: every test of the split was judged correct on the trusted side)
    ("status", pa.string()),
    ("tests_total", pa.int32()),  # inputs in this split
    ("tests_run", pa.int32()),  # inputs that got a verdict (stops at the first failure)
    ("tests_passed", pa.int32()),
    ("first_fail_index", pa.int32()),  # null when none failed
    ("error_type", pa.string()),  # exception name, WrongOutput, Timeout, Died, Protocol(...); null on pass
    ("wall_s", pa.float64()),  # sandbox wall time, start to teardown
    ("startup_s", pa.float64()),  # spawn -> driver ready: the per-sandbox overhead
    ("cpu_s", pa.float64()),  # user + system CPU of everything in the sandbox
    ("peak_mb", pa.float64()),  # driver's peak RSS, self-reported at the end (NaN if it did not finish)
    ("exit_code", pa.int32()),  # null when killed by a signal
    ("signal", pa.int32()),  # null unless killed by a signal
    ("time_factor", pa.float64()),  # EvalPlus gt_time_limit_factor used
    ("min_time_limit_s", pa.float64()),  # EvalPlus min_time_limit used
    ("time_limit_s", pa.float64()),  # the split's budget: min(timeout_s, sum of per-test limits)
    ("sandbox", pa.string()),  # bwrap | none (none: ran WITHOUT isolation)
    ("sandbox_profile", pa.string()),  # JSON: tool version, interpreter, limits, "enforced": those in force
])  # fmt: skip


def time_limits(ref_time: list[float], factor: float, minimum: float) -> list[float]:
    """EvalPlus's per-input limits from canonical-solution seconds."""
    return [max(minimum, factor * t) for t in ref_time]


def judge_split(family: str, entry_point: str, atol: float, truth: SplitTruth):
    """A judge for `run_tests`: EvalPlus's comparison, including its quirk that once an
    expected float has forced atol=1e-6, the tolerance stays for the rest of the split."""
    state = {"atol": atol}
    needs_input = (family, entry_point) in NEEDS_INPUT  # decoding every input per sample is costly

    def judge(i: int, out) -> bool:
        exp = truth.expected[i]
        inp = decode(truth.inputs[i]) if needs_input else None
        ok = outputs_match(family, entry_point, inp, out, exp, state["atol"])
        if not (family == "humaneval" and entry_point == "find_zero"):
            if state["atol"] == 0 and is_floats(exp):
                state["atol"] = 1e-6
        return ok

    return judge


def solution_of(task: Task, sample: dict) -> str:
    return sample["solution"] if "solution" in sample else task.prompt + sample["completion"]


def solution_sha256(code: str) -> str:
    """Of any string a samples line can hold: a lone surrogate ("\\ud800") is valid JSON and is
    hashed as it is, then fails to compile in the sandbox (EvalPlus scores it a failure)."""
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


def execute_one(profile: SandboxProfile, uid: int | None, bench: Benchmark, task: Task, code: str,
                truth: SplitTruth, exec_cfg: dict) -> tuple[Outcome, float]:  # fmt: skip
    """Run `code` on one split; returns the outcome and the split's time budget."""
    if truth.error is not None:
        return Outcome(status="groundtruth_error", tests_total=len(truth.inputs), error_type=truth.error[:80]), 0.0
    if task.lcb is not None:  # LiveCodeBench: its tests carry the expected outputs
        job, budget, judge = sandbox_job(task.lcb, code)
        return run_tests(profile, uid, job, budget, judge), budget
    limits = time_limits(truth.ref_time, exec_cfg["time_factor"], exec_cfg["min_time_limit_s"])
    budget = min(float(exec_cfg["timeout_s"]), sum(limits))
    job = {"code": code, "entry_point": task.entry_point, "inputs": truth.inputs, "time_limits": limits,
           "mode": "run", "output_mode": output_mode(bench, task, canonical=False)}  # fmt: skip
    judge = judge_split(bench.family, task.entry_point, task.atol, truth)
    return run_tests(profile, uid, job, budget, judge), budget


def _settings(exec_cfg: dict) -> dict:
    cfg = {
        "sandbox": "bwrap",
        "timeout_s": 60.0,  # per (sample, split) cap; EvalPlus: EVALPLUS_TIMEOUT_PER_TASK
        "time_factor": 4.0,  # EvalPlus gt_time_limit_factor
        "min_time_limit_s": 1.0,  # EvalPlus min_time_limit
        **exec_cfg,
    }
    for key in ("timeout_s", "time_factor", "min_time_limit_s"):
        cfg[key] = float(cfg[key])
    return cfg


def journal_path(out_path: Path) -> Path:
    """The rows run_execute has made so far (one JSON line each; it resumes from them)."""
    return out_path.with_name(out_path.name + ".partial.jsonl")


def run_execute(bench_cfg: dict, samples_path: Path, exec_cfg: dict, out_path: Path, threads: int) -> None:
    """Execute every sample in `samples_path` against `bench_cfg`'s tests; write EXECUTE_SCHEMA rows,
    one per (sample, split), whatever the samples do."""
    cfg = _settings(exec_cfg)
    bench = load_benchmark(bench_cfg)
    samples = read_samples(samples_path, bench)  # a malformed file fails here, before any sandbox work
    profile = make_profile(cfg)
    check_sandbox(profile)  # refuse before any untrusted code runs
    threads = max(1, int(threads))
    if bench.family == "livecodebench":  # expected outputs come with the problems, no canonical runs
        truth = {t.task_id: {"base": SplitTruth(list(t.lcb.tests), [o for _, o in t.lcb.tests], [])} for t in bench.tasks}
    else:
        # One canonical run at a time, as EvalPlus times them: two at once made the
        # reference times (and so every limit) a median 1.45x longer on 2 cores.
        truth = build_groundtruth(bench, profile, Path(cfg.get("groundtruth_dir") or out_path.parent / "groundtruth"),
                                  threads=1)  # fmt: skip
    tasks = {t.task_id: t for t in bench.tasks}

    fixed = {
        "dataset": bench.dataset, "dataset_version": bench.version, "dataset_sha256": bench.sha256,
        "time_factor": cfg["time_factor"], "min_time_limit_s": cfg["min_time_limit_s"],
        "sandbox": profile.kind, "sandbox_profile": profile.describe(),
    }  # fmt: skip
    partial = journal_path(out_path)
    done = {}
    if partial.exists():  # resume: keep rows made under the same dataset and settings
        for row in read_journal(partial):
            if all(row.get(k) == v for k, v in fixed.items()) and set(EXECUTE_SCHEMA.names) <= set(row):
                done[(row["task_id"], row["sample_id"], row["split"], row["solution_sha256"])] = row
        if partial.read_bytes()[-1:] not in (b"", b"\n"):  # a torn last line must not swallow the next row
            with open(partial, "ab") as f:
                f.write(b"\n")
    jobs = []
    for s in samples:
        code = solution_of(tasks[s["task_id"]], s)
        digest = solution_sha256(code)
        for split in bench.splits:
            if (s["task_id"], s["sample_id"], split, digest) not in done:
                jobs.append((s["task_id"], s["sample_id"], split, code, digest))
    log.info("%s: %d samples x %d splits, %d to run (%d resumed), %d threads, sandbox=%s",
             bench.dataset, len(samples), len(bench.splits), len(jobs), len(done), threads, profile.kind)  # fmt: skip

    lock = threading.Lock()
    with lease_uids(profile.uid_base, threads) as uids:
        slots: Queue[int | None] = Queue()
        for uid in uids:
            slots.put(uid)

        def one(task_id: str, sample_id: int, split: str, code: str, digest: str) -> dict:
            uid = slots.get()
            try:
                res, budget = execute_one(profile, uid, bench, tasks[task_id], code, truth[task_id][split], cfg)
            except Exception as e:  # noqa: BLE001 - one sample's failure is its row, never the stage's
                log.exception("%s sample %s %s: executor failure", task_id, sample_id, split)
                res, budget = Outcome(status="sandbox_error", tests_total=len(truth[task_id][split].inputs),
                                      error_type=f"Executor({type(e).__name__})"), float("nan")  # fmt: skip
            finally:
                slots.put(uid)
            u = res.usage
            row = dict(fixed, task_id=task_id, sample_id=sample_id, solution_sha256=digest, split=split,
                       status=res.status, tests_total=res.tests_total, tests_run=res.tests_run,
                       tests_passed=res.tests_passed, first_fail_index=res.first_fail, error_type=res.error_type,
                       wall_s=u.wall_s, startup_s=u.startup_s, cpu_s=u.cpu_s, peak_mb=u.peak_mb,
                       exit_code=u.exit_code, signal=u.signal, time_limit_s=budget)  # fmt: skip
            with lock, open(partial, "a") as f:
                f.write(json.dumps(row) + "\n")
            return row

        rows = list(done.values())
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(one, *j) for j in jobs]
            for fut in track(as_completed(futures), total=len(futures), desc=f"execute {bench.dataset}", unit="run"):
                rows.append(fut.result())
    rows.sort(key=lambda r: (r["task_id"], r["sample_id"], r["split"]))
    write_table(out_path, rows, EXECUTE_SCHEMA)
    partial.unlink(missing_ok=True)
    passed = sum(r["status"] == "pass" for r in rows)
    log.info("%s: %d/%d (sample, split) runs passed", bench.dataset, passed, len(rows))
