"""Sandboxed execution vs stock EvalPlus on the same honest samples: verdict parity and throughput.

    python benchmarks/sandbox_vs_evalplus.py ../shared/data/HumanEvalPlus-v0.1.10.jsonl.gz [--tasks N] [--threads 2]

Samples per HumanEval+ task: its canonical solution, up to two AST mutants (a comparison,
arithmetic operator or integer constant changed), and one variant in rotation: the result
as a tuple / as floats / nudged within and beyond tolerance, as numpy scalars, as
Fraction or Decimal, an exception on some inputs, prints, a `__main__` block, extra
CPU work, or a 3 s sleep per call (a timeout in both). Both harnesses run twice; the
second run (ground truth cached) is the one timed, side by side on the same machine.
Prints samples/s for each, and every verdict mismatch outside the documented exception
(HumanEval/32, whose canonical solution stock EvalPlus 0.3.1 fails: see skipbench/execute/compare.py).
"""

import argparse
import ast
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from skipbench.benchmarks.tasks import load_benchmark
from skipbench.execute import run_execute

EXCEPTIONS = {"HumanEval/32"}  # documented: stock EvalPlus fails every solution of it
_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
         ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult}  # fmt: skip


def mutants(code: str, limit: int = 2) -> list[str]:
    """Programs differing from `code` in one operator or integer constant (the k-th site)."""
    out: list[str] = []
    for k in range(40):
        tree, site = ast.parse(code), [0]

        class Mutate(ast.NodeTransformer):
            def _hit(self):
                site[0] += 1
                return site[0] - 1 == k

            def visit_Compare(self, node):
                self.generic_visit(node)
                if type(node.ops[0]) in _SWAP and self._hit():
                    node.ops[0] = _SWAP[type(node.ops[0])]()
                return node

            def visit_BinOp(self, node):
                self.generic_visit(node)
                if type(node.op) in _SWAP and self._hit():
                    node.op = _SWAP[type(node.op)]()
                return node

            def visit_Constant(self, node):
                if type(node.value) is int and self._hit():
                    return ast.copy_location(ast.Constant(node.value + 1), node)
                return node

        new = ast.unparse(Mutate().visit(tree))
        if site[0] <= k:
            break
        if new != ast.unparse(ast.parse(code)) and new not in out:
            out.append(new)
        if len(out) == limit:
            break
    return out


# name -> wrapper body; `_impl` is the canonical solution renamed, `r` its result.
VARIANTS = {
    "as_tuple": "r = _impl(*a)\n    return tuple(r) if type(r) is list else r",
    "as_float": "r = _impl(*a)\n    return float(r) if type(r) is int else r",
    "nudged_within": "r = _impl(*a)\n    return r + 1e-9 if type(r) is float else r",
    "nudged_beyond": "r = _impl(*a)\n    return r * (1 + 1e-3) + 1e-3 if type(r) is float else r",
    "numpy_scalar": "import numpy as np\n    r = _impl(*a)\n    return np.float64(r) if type(r) is float else (np.int64(r) if type(r) is int else r)",
    "fraction": "from fractions import Fraction\n    r = _impl(*a)\n    return Fraction(r) if type(r) in (int, float) else r",
    "decimal": "from decimal import Decimal\n    r = _impl(*a)\n    return Decimal(r) if type(r) in (int, float) else r",
    "raises_sometimes": "if len(repr(a)) % 3 == 0:\n        raise ValueError('no')\n    return _impl(*a)",
    "prints": "print('args', a)\n    return _impl(*a)",
    "main_block": "return _impl(*a)\nif __name__ == '__main__':\n    raise SystemExit(1)",
    "extra_cpu": "sum(range(20000))\n    return _impl(*a)",
    "sleeps": "import time\n    time.sleep(3)\n    return _impl(*a)",
}


def variant(prompt: str, canonical: str, entry: str, name: str) -> str:
    code = (prompt + canonical).replace(f"def {entry}(", "def _impl(", 1)
    return f"{code}\n\ndef {entry}(*a):\n    {VARIANTS[name]}\n"


def make_samples(tasks) -> list[dict]:
    samples, names = [], sorted(VARIANTS)
    for k, t in enumerate(tasks):
        full = t.prompt + t.canonical_solution
        kinds = [("canonical", full)] + [("mutant", m) for m in mutants(full)]
        name = names[k % len(names)]
        if name != "sleeps" or k % (3 * len(names)) == names.index("sleeps"):  # few 3 s sleepers
            kinds.append((name, variant(t.prompt, t.canonical_solution, t.entry_point, name)))
        samples += [{"task_id": t.task_id, "solution": code, "kind": kind} for kind, code in kinds]
    return samples


# Stock EvalPlus 0.3.1 on the samples' tasks only: evaluate()'s own loop (evalplus/evaluate.py,
# ProcessPoolExecutor over check_correctness with its cached ground truth), which refuses
# a samples file that does not cover every task.
STOCK = """
import json, sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from evalplus.data import get_human_eval_plus, get_human_eval_plus_hash
from evalplus.evaluate import check_correctness, get_groundtruth
problems = get_human_eval_plus()
expected = get_groundtruth(problems, get_human_eval_plus_hash(), [])
samples = [json.loads(l) for l in open("s.jsonl")]
cid = Counter()
with ProcessPoolExecutor(max_workers=int(sys.argv[1])) as ex:
    futures = []
    for s in samples:
        t = s["task_id"]
        futures.append(ex.submit(check_correctness, "humaneval", cid[t], problems[t], s["solution"], expected[t],
                                 False, True, str(len(futures))))
        cid[t] += 1
    out = {}
    for f in futures:
        r = f.result()
        out.setdefault(r["task_id"], []).append({"cid": r["completion_id"], "base_status": r["base"][0],
                                                 "plus_status": r["plus"][0]})
json.dump({"eval": out}, open("s_eval_results.json", "w"))
"""


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="HumanEvalPlus-v0.1.10.jsonl.gz")
    ap.add_argument("--tasks", type=int, default=164)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="every k-th task only (stock EvalPlus's loop either way)")
    ap.add_argument("--gt-dir", type=Path, help="ground-truth cache of an earlier run to reuse")
    ap.add_argument("--no-warm", dest="warm", action="store_false", help="skip the untimed warm-up runs")
    args = ap.parse_args()
    cfg = {"dataset": "humaneval_plus", "path": str(args.dataset.resolve()), "tasks": args.tasks}
    tasks = load_benchmark(cfg).tasks[:: args.every]
    cfg["tasks"] = [t.task_id for t in tasks]
    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    os.chdir(work)  # stock EvalPlus writes its results next to the samples
    samples = make_samples(tasks)
    Path("s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))

    ex = {"sandbox": "bwrap", "timeout_s": 60, "groundtruth_dir": str(args.gt_dir or work / "gt")}
    run = lambda out: run_execute(cfg, Path("s.jsonl"), ex, Path(out), args.threads)  # noqa: E731
    env = dict(os.environ, HUMANEVAL_OVERRIDE_PATH=cfg["path"])
    stock_cmd = [sys.executable, "-c", STOCK, str(args.threads)]
    stock_run = lambda: subprocess.run(stock_cmd, env=env, capture_output=True, check=True)  # noqa: E731
    # Warm-up fills both ground-truth caches (ours: run in the sandbox; stock: a pickle in ~/.cache).
    first, stock_first = timed(lambda: run("warm.parquet")) if args.warm else 0.0, timed(stock_run) if args.warm else 0.0
    load_before = os.getloadavg()
    ours, stock = timed(lambda: run("ours.parquet")), timed(stock_run)  # side by side, caches warm
    load_after = os.getloadavg()

    n = len(samples)
    kinds = collections.Counter(s["kind"] for s in samples)
    print(f"{n} samples over {len(tasks)} tasks ({dict(sorted(kinds.items()))}), base and plus tests, {args.threads} workers")
    print(f"skipbench sandbox: {ours:.1f} s, {n / ours:.2f} samples/s (first run with ground truth {first:.1f} s)")
    print(f"stock EvalPlus:    {stock:.1f} s, {n / stock:.2f} samples/s (first run with ground truth {stock_first:.1f} s)")
    print(f"ratio: {stock / ours:.2f}x stock EvalPlus's samples/s")
    print(f"load average (1, 5, 15 min) before the timed runs {load_before}, after {load_after}, {os.cpu_count()} CPUs")
    verdicts: dict = {}
    for r in pq.read_table("ours.parquet").to_pylist():
        verdicts.setdefault((r["task_id"], r["sample_id"]), {})[r["split"]] = r["status"] == "pass"
    results = json.loads(Path("s_eval_results.json").read_text())["eval"]
    kind_of = {}
    per_task: collections.Counter = collections.Counter()
    for s in samples:
        kind_of[(s["task_id"], per_task[s["task_id"]])] = s["kind"]
        per_task[s["task_id"]] += 1
    agree, mismatches, excepted = collections.Counter(), [], 0
    for tid, rs in results.items():
        for r in rs:
            key = (tid, r["cid"])  # completion_id: file order per task, as our sample_id
            mine = (verdicts[key]["base"], verdicts[key]["plus"])
            theirs = (r["base_status"] == "pass", r["plus_status"] == "pass")
            if tid in EXCEPTIONS:
                excepted += 1
            elif mine == theirs:
                agree[kind_of[key]] += 1
            else:
                mismatches.append((tid, key[1], kind_of[key], mine, theirs))
    total = sum(agree.values()) + len(mismatches)
    print(f"verdict agreement (base and plus): {sum(agree.values())}/{total} "
          f"({100 * sum(agree.values()) / max(total, 1):.2f}%), {excepted} samples of {sorted(EXCEPTIONS)} excluded")  # fmt: skip
    print(f"agreeing by kind: {dict(sorted(agree.items()))}")
    print(f"mismatches: {len(mismatches)} {mismatches}")


if __name__ == "__main__":
    main()
