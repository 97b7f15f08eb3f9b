"""`skipbench`: everyday tasks without the workflow's internals (console script).

    skipbench evaluate SAMPLES.jsonl --dataset humaneval_plus   # EvalPlus samples -> pass@1
    skipbench run --variant top3=topk:k=3 [-- SNAKEMAKE ARGS]   # the workflow, plus variants
    skipbench show [RUN]                                        # the summary table

Thin: `evaluate` calls the execute and score stages' library functions (no model, no
training), `run` calls Snakemake, `show` prints the figure stage's summary. Plain
`snakemake` keeps working for everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

def _checkout() -> Path:
    """The workflow checkout: the working directory when it has a Snakefile, else the
    one this module lives in (editable install)."""
    here = Path.cwd()
    return here if (here / "Snakefile").exists() else Path(__file__).resolve().parents[2]


ROOT = _checkout()
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def parse_variant(spec: str) -> tuple[str, dict]:
    """"NAME=STRATEGY:k=v,k=v" -> (NAME, {"strategy": STRATEGY, k: typed v, ...})."""
    from skipbench.config_types import typed

    name, sep, rest = spec.partition("=")
    strategy, _, params = rest.partition(":")
    if not sep or not name or not strategy:
        raise ValueError(f"--variant {spec!r}: expected NAME=STRATEGY[:key=value,...], e.g. top3=topk:k=3")
    variant: dict = {"strategy": strategy}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {spec!r}: parameter {item!r} is not key=value")
        if key in variant:
            raise ValueError(f"--variant {spec!r}: {key!r} given twice ({variant[key]!r} and {value!r})")
        variant[key] = value
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["variants"]
    return name, typed({name: variant}, schema)[name]


def _tasks_in(samples: Path) -> list[str]:
    from skipbench.io import read_jsonl

    return list(dict.fromkeys(s["task_id"] for s in read_jsonl(samples)))


def _resume_from(execution_path: Path) -> None:
    """A rerun keeps the rows of an earlier evaluation: they become the journal run_execute
    resumes from, which keeps a row only for the same solution, dataset and sandbox settings."""
    import pyarrow.parquet as pq

    from skipbench.execute.stage import journal_path
    from skipbench.io import write_jsonl

    journal = journal_path(execution_path)
    if execution_path.exists() and not journal.exists():
        try:
            rows = pq.read_table(execution_path).to_pylist()
        except (OSError, ValueError) as e:  # not our table, or torn: run everything again
            print(f"note: {execution_path} is unreadable ({e}); evaluating every sample", file=sys.stderr)
            return
        write_jsonl(journal, rows)


def cmd_evaluate(args) -> int:
    import pyarrow.parquet as pq

    from skipbench.benchmarks.tasks import DATASETS, load_benchmark
    from skipbench.score.evalplus_results import eval_results_path, write_eval_results
    from skipbench.execute import run_execute
    from skipbench.benchmarks.samples import read_samples
    from skipbench.score.stage import pass_at_1, sample_passes

    samples = Path(args.samples)
    bench_cfg = {"dataset": args.dataset}
    if args.path:
        bench_cfg["path"] = args.path
    # EvalPlus scores every task of the dataset; a samples file with fewer tasks is scored
    # on its own tasks (in dataset order), and says so. Every line is checked first (file:line).
    every = load_benchmark(bench_cfg)
    wanted = {s["task_id"] for s in read_samples(samples, every)}
    if not wanted:
        print(f"error: {samples}: no samples in it (every line is blank): nothing to score", file=sys.stderr)
        return 2
    bench_cfg["tasks"] = [t.task_id for t in every.tasks if t.task_id in wanted]
    out = Path(args.out or eval_results_path(str(samples)))
    execution_path = out.with_name(out.name.replace("_eval_results.json", "") + "_execution.parquet")
    exec_cfg = {"sandbox": args.sandbox, "groundtruth_dir": str(Path(args.cache) / "groundtruth"), "uid_base": args.uid_base}
    _resume_from(execution_path)
    run_execute(bench_cfg, samples, exec_cfg, execution_path, args.parallel)
    execution = pq.read_table(execution_path).to_pandas()
    write_eval_results(out, load_benchmark(bench_cfg), samples, execution)
    passes = sample_passes(execution)
    name = args.dataset
    print(f"{name} {DATASETS[name].version}: {len(bench_cfg['tasks'])} of {len(every.tasks)} tasks, {len(passes)} samples")
    for split, label in (("base", "base tests"), ("plus", "base + plus tests")):
        if split in set(execution["split"]):
            p, lo, hi, _ = pass_at_1(passes[split])
            print(f"pass@1 ({label}):\t{p:.3f}  [95% CI {lo:.3f}, {hi:.3f}]")
    print(f"EvalPlus results: {out}\nper-test rows:    {execution_path}")
    return 0


def cmd_run(args) -> int:
    variants = dict(parse_variant(v) for v in args.variant)
    directory = Path(args.directory).resolve()
    if not (directory / "Snakefile").exists():
        print(f"error: {directory} is no skipbench checkout (no Snakefile): pass --directory", file=sys.stderr)
        return 2
    if directory != Path.cwd().resolve():  # say where: the editable install's checkout, or --directory's
        print(f"skipbench: running the workflow of {directory} (not {Path.cwd()})", file=sys.stderr)
    cmd = [sys.executable, "-m", "snakemake", "--cores", args.cores]
    if variants:
        cmd += ["--config", "variants=" + json.dumps(variants)]
    cmd += args.snakemake
    print(f"+ cd {directory} && " + " ".join(cmd), file=sys.stderr)
    rc = subprocess.call(cmd, cwd=directory)
    if variants:
        print(dropped_variants_note(variants), file=sys.stderr)
    if rc == 0 and "-n" not in args.snakemake and "--dry-run" not in args.snakemake:
        return cmd_show(argparse.Namespace(run=None, directory=directory))
    return rc


def dropped_variants_note(variants: dict) -> str:
    """--variant adds to this run's config only (snakemake --config): what the next plain
    `snakemake` does with them, and how to keep them."""
    listed = "".join(f"\n  {name}: {yaml.safe_dump(v, default_flow_style=True, sort_keys=False).strip()}"
                     for name, v in variants.items())
    return (f"note: {', '.join(variants)} were added for this run only (snakemake --config). The next plain "
            f"`snakemake` reruns scores and figures WITHOUT them. To keep them, add under `variants:` in "
            f"config/config.yaml:{listed}")


def _default_run(directory: Path) -> str:
    config = yaml.safe_load((directory / "config" / "config.yaml").read_text())
    return config["run"]


def cmd_show(args) -> int:
    from skipbench.report.summary_table import markdown, text_tables

    import pyarrow.parquet as pq

    directory = Path(args.directory)
    run = args.run or _default_run(directory)
    path = directory / "results" / run / "figures" / "summary.parquet"
    if not path.exists():
        print(f"error: no summary at {path}: run the workflow first (skipbench run, or snakemake)", file=sys.stderr)
        return 1
    summary = pq.read_table(path).to_pandas()
    print(markdown(summary) if args.wide else text_tables(summary, shutil.get_terminal_size((100, 24)).columns), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skipbench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="score an EvalPlus samples.jsonl in the sandbox; print pass@1")
    ev.add_argument("samples", help='JSONL of {"task_id", "solution" | "completion"}')
    ev.add_argument("--dataset", required=True, choices=["humaneval", "humaneval_plus", "mbpp_plus"])
    ev.add_argument("--path", help="local dataset file (else HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH, "
                    "EvalPlus's cache, EvalPlus's download)")  # fmt: skip
    ev.add_argument("--out", help="eval_results.json path (default: SAMPLES_eval_results.json, as EvalPlus)")
    ev.add_argument("--sandbox", choices=["bwrap", "none"], default="bwrap",
                    help="none runs the samples WITHOUT isolation")  # fmt: skip
    ev.add_argument("--parallel", type=int, default=2, help="sandboxes at once")
    ev.add_argument("--uid-base", type=int, default=61000, metavar="UID",
                    help="as root, sandboxes run as uids UID..UID+1023; refused if any user or process has one")  # fmt: skip
    ev.add_argument("--cache", default=str(Path.home() / ".cache" / "skipbench"), help="ground-truth cache")
    ev.set_defaults(func=cmd_evaluate)
    rn = sub.add_parser("run", help="run the workflow (snakemake), with variants added from the command line")
    rn.add_argument("--variant", action="append", default=[], metavar="NAME=STRATEGY:k=v,...",
                    help="add a variant, e.g. top3=topk:k=3 or thr=threshold:beta=0.2,renormalise=true")  # fmt: skip
    rn.add_argument("--cores", default="all")
    rn.add_argument("--directory", default=str(ROOT), help=f"the checkout to run in (default {ROOT})")
    rn.add_argument("snakemake", nargs=argparse.REMAINDER, help="after --: passed to snakemake")
    rn.set_defaults(func=cmd_run)
    sh = sub.add_parser("show", help="print a run's summary table")
    sh.add_argument("run", nargs="?", help="results/<RUN> (default: config/config.yaml's run)")
    sh.add_argument("--directory", default=str(ROOT))
    sh.add_argument("--wide", action="store_true", help="every column and note as Markdown (default: fit the terminal)")
    sh.set_defaults(func=cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "snakemake", None) and args.snakemake[0] == "--":
        args.snakemake = args.snakemake[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
