"""Sandboxed execution vs stock EvalPlus on the same samples: throughput and verdict parity.

    python benchmarks/sandbox_vs_evalplus.py ../shared/data/HumanEvalPlus-v0.1.10.jsonl.gz [--tasks N] [--threads 2]

Samples: per HumanEval+ task its canonical solution and an honest mutant (one operator
changed). Both harnesses run twice; the second run (ground truth cached) is the one timed.
Prints samples/s for each, the per-sandbox start-up overhead, and every verdict mismatch.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from skipbench.benchmarks import load_benchmark
from skipbench.execute import run_execute

MUTATIONS = ((" < ", " <= "), (" > ", " >= "), (" + 1", " + 2"), (" == ", " != "), (" - ", " + "))


def mutant(code: str) -> str:
    for a, b in MUTATIONS:
        if a in code:
            return code.replace(a, b, 1)
    return "    return None\n"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="HumanEvalPlus-v0.1.10.jsonl.gz")
    ap.add_argument("--tasks", type=int, default=164)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = {"dataset": "humaneval_plus", "path": str(args.dataset.resolve()), "tasks": args.tasks}
    tasks = load_benchmark(cfg).tasks
    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    os.chdir(work)  # stock EvalPlus writes its results next to the samples
    samples = [s for t in tasks for s in ({"task_id": t.task_id, "solution": t.prompt + t.canonical_solution},
                                          {"task_id": t.task_id, "solution": t.prompt + mutant(t.canonical_solution)})]
    Path("s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))

    ex = {"sandbox": "bwrap", "timeout_s": 60, "groundtruth_dir": str(work / "gt")}
    run = lambda out: run_execute(cfg, Path("s.jsonl"), ex, Path(out), args.threads)  # noqa: E731
    first = timed(lambda: run("warm.parquet"))
    ours = timed(lambda: run("ours.parquet"))
    env = dict(os.environ, HUMANEVAL_OVERRIDE_PATH=cfg["path"])
    stock_cmd = [sys.executable, "-c", "from evalplus.evaluate import evaluate; evaluate(dataset='humaneval', "
                 f"samples='s.jsonl', parallel={args.threads}, i_just_wanna_run=True)"]
    stock_run = lambda: subprocess.run(stock_cmd, env=env, input=b"y\n", capture_output=True, check=True)  # noqa: E731
    stock_first = timed(stock_run)
    stock = timed(stock_run)

    n = len(samples)
    print(f"{n} samples ({len(tasks)} tasks x canonical + mutant), base and plus tests, {args.threads} workers")
    print(f"skipbench sandbox: {ours:.1f} s, {n / ours:.2f} samples/s (first run with ground truth {first:.1f} s)")
    print(f"stock EvalPlus:    {stock:.1f} s, {n / stock:.2f} samples/s (first run with ground truth {stock_first:.1f} s)")
    rows = pq.read_table("ours.parquet").to_pylist()
    startup = [r["startup_s"] for r in rows]
    print(f"sandbox start-up per run: median {statistics.median(startup) * 1000:.0f} ms, "
          f"mean {statistics.mean(startup) * 1000:.0f} ms over {len(rows)} (sample, split) runs")
    verdicts = {}
    for r in rows:
        verdicts.setdefault((r["task_id"], r["sample_id"]), {})[r["split"]] = r["status"] == "pass"
    results = json.loads(Path("s_eval_results.json").read_text())["eval"]
    mismatches = [(tid, k) for tid, rs in results.items() for k, r in enumerate(rs)
                  if (verdicts[(tid, k)]["base"], verdicts[(tid, k)]["plus"])
                  != (r["base_status"] == "pass", r["plus_status"] == "pass")]
    print(f"verdict mismatches vs stock EvalPlus: {len(mismatches)} {mismatches}")


if __name__ == "__main__":
    main()
