"""The micro workflow: its config, a Snakemake runner, and one finished run per session.

Every workflow test module reuses the run of `finished_run` (conftest's `run` fixture): the
whole DAG once per pytest session. Tests that change the run (a new variant, a deleted file)
copy its working directory first (shutil.copytree(run.parents[1], ..., symlinks=True)).
"""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lcb_fixture import SOLUTIONS, write_release
from skipbench.benchmarks.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TASKS = 3


def micro_config(workdir: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["run"] = "micro"
    synth = cfg["model"]["synthetic"]
    synth["architecture"]["num_hidden_layers"] = 3
    synth["vocab_size"] = 512
    synth["shards"] = 2
    # Training runs (the checkpoint rule, its table, the FP8 round-trip greedy check) but
    # stops early: these tests check schemas, plans and scores of external samples, not what
    # the model learned (400 steps were most of the run). Memorisation: tests/test_checkpoint.py.
    synth["memorise"]["max_steps"] = 5
    cfg["engine"]["max_model_len"] = 512
    cfg["generation"]["max_new_tokens"] = 96
    he = {"dataset": "humaneval", "tasks": TASKS}
    tasks = load_tasks(he)
    canonical, wrong = workdir / "canonical.jsonl", workdir / "wrong.jsonl"
    canonical.write_text("".join(json.dumps({"task_id": t.task_id, "solution": t.prompt + t.canonical_solution}) + "\n" for t in tasks))
    wrong.write_text("".join(json.dumps({"task_id": t.task_id, "completion": "    return None\n"}) + "\n" for t in tasks))
    write_release(workdir / "lcb")
    right = {}  # one correct fixture solution per LiveCodeBench problem, one wrong one for A+B
    for qid, code, verdict in SOLUTIONS:
        if verdict:
            right.setdefault(qid, code)
    lcb_samples = workdir / "lcb_samples.jsonl"
    lcb_samples.write_text("".join(json.dumps({"task_id": q, "solution": c}) + "\n" for q, c in right.items())
                           + json.dumps({"task_id": "abc001_a", "solution": "print(0)"}) + "\n")
    # Relative to the working directory: a copy of it is the same run (test_fresh_clone_...).
    cfg["benchmarks"] = {
        "he": {**he, "samples": canonical.name},  # dense + top1, and canonical solutions as "external"
        "he_wrong": {**he, "samples": wrong.name, "variants": []},  # only the always-wrong samples
        # LiveCodeBench's path: execution by its rules, scores per difficulty (no generation: time)
        "lcb": {"dataset": "livecodebench", "path": "lcb/test.jsonl", "released_after": "2024-01-01",
                "samples": lcb_samples.name, "variants": []},
    }
    cfg["variants"] = {"dense": {"strategy": "dense"}, "top1": {"strategy": "topk", "k": 1}}
    cfg["throughput"]["variants"] = ["dense", "top1"]
    cfg["replay"] = {"expert_shape": "512x256", "steps": 2, "repeats": 2, "budget_s": 10, "fit_budget_s": 10}
    return cfg


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(workdir / "config.yaml"), "--replace-workflow-config", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2300)  # under pytest's 2400 s: a slow machine, not a hang
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(workdir.rglob("logs/**/*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-4000:]}\n{logs}")
    return proc


def finished_run(workdir: Path) -> Path:
    """Run the micro workflow in `workdir`; returns its results folder."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(micro_config(workdir)))
    snakemake(workdir)
    return workdir / "results" / "micro"


def table(path: Path, schema):
    t = pq.read_table(path)
    assert t.schema.names == schema.names, path
    assert t.schema.equals(schema, check_metadata=False), path
    return t.to_pandas()
