"""The whole DAG on a micro config: every stage runs for real, every table has its schema.

One workflow run (a few minutes on 2 cores) shared by every workflow test of the session
(the `run` fixture of conftest.py, tests/workflow_run.py).
"""

import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from skipbench.checkpoint import TRAINING_SCHEMA
from skipbench.execute import EXECUTE_SCHEMA
from skipbench.fp8 import CONVERT_REPORT_SCHEMA
from skipbench.infer import GENERATE_SCHEMA, GENERATIONS_SCHEMA, INFER_SUMMARY_SCHEMA
from skipbench.kernel_build import KERNEL_MANIFEST_SCHEMA
from skipbench.layout import MANIFEST_SCHEMA
from skipbench.score import SCORES_SCHEMA
from skipbench.throughput import THROUGHPUT_SCHEMA
from workflow_run import ROOT, SNAKEMAKE, TASKS, micro_config, snakemake, table  # noqa: F401 (other modules import them from here)

pytestmark = pytest.mark.slow


def test_every_table_has_its_schema(run):
    assert len(table(run / "model/checkpoint_manifest.parquet", MANIFEST_SCHEMA)) >= 4
    table(run / "model/training.parquet", TRAINING_SCHEMA)
    report = table(run / "model/convert_report.parquet", CONVERT_REPORT_SCHEMA)
    assert len(report) > 0
    manifest = table(run / "kernels/manifest.parquet", KERNEL_MANIFEST_SCHEMA)
    assert manifest["passed"].all() and set(manifest["backend"]) == {"reference"}
    for variant in ("dense", "top1"):
        infer = run / "infer/he" / variant
        gens = table(infer / "generations.parquet", GENERATIONS_SCHEMA)
        assert len(gens) == TASKS
        summary = table(infer / "summary.parquet", INFER_SUMMARY_SCHEMA)
        assert summary["tokens_per_s"].iloc[0] > 0
        assert len((infer / "samples.jsonl").read_text().splitlines()) == TASKS
    # the eager engine: one start served both variants, in generation and in the throughput sweep
    generate = table(run / "generate/he.parquet", GENERATE_SCHEMA)
    assert list(generate["variant"]) == ["dense", "top1"] and list(generate["engine_start"]) == [0, 0]
    assert not (run / "generate/he_wrong.parquet").exists()  # external samples only: no engine
    for variant in ("dense", "top1"):
        sweep = table(run / f"throughput/{variant}.parquet", THROUGHPUT_SCHEMA)
        assert sweep["interleaved"].all() and (sweep["variant"] == variant).all()
    for bench, variant in [("he", "dense"), ("he", "top1"), ("he", "external"), ("he_wrong", "external")]:
        table(run / f"execute/{bench}/{variant}.parquet", EXECUTE_SCHEMA)
    for ext in ("png", "svg"):
        assert (run / f"figures/tradeoff_he.{ext}").stat().st_size > 1000


def test_scores_canonical_pass_wrong_fail_and_skipping_costs_experts(run):
    scores = table(run / "score/scores.parquet", SCORES_SCHEMA).set_index(["benchmark", "variant"])
    assert scores.loc[("he", "external"), "pass1_base"] == 1.0
    assert scores.loc[("he_wrong", "external"), "pass1_base"] == 0.0
    # LiveCodeBench: 3 problems in the window, each solved by its first sample (the wrong A+B one is sample 1)
    lcb = scores.loc[("lcb", "external")]
    assert lcb["dataset"] == "livecodebench" and lcb["tasks"] == 3 and lcb["pass1_base"] == pytest.approx(5 / 6)
    subsets = pq.read_table(run / "score/subsets.parquet").to_pandas().set_index("subset")
    assert subsets.loc["easy", "pass1"] == pytest.approx(0.75) and subsets.loc["medium", "pass1"] == 1.0
    assert "difficulty=easy" in (run / "figures/summary.md").read_text()
    dense, top1 = scores.loc[("he", "dense")], scores.loc[("he", "top1")]
    assert dense["experts_per_token"] == pytest.approx(4.0)
    assert top1["experts_per_token"] == pytest.approx(1.0)
    assert dense["identical_to_dense"] == 1.0
    assert top1["pass1_base"] <= dense["pass1_base"]


def test_finished_workflow_reruns_nothing_and_figures_rerun_alone(run):
    workdir = run.parents[1]
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    gens = run / "infer/he/dense/generations.parquet"
    before = gens.stat().st_mtime_ns
    figure = run / "figures/tradeoff_he.svg"
    figure_before = figure.stat().st_mtime_ns
    snakemake(workdir, "-R", "figures")
    assert gens.stat().st_mtime_ns == before  # inference did not rerun
    assert figure.stat().st_mtime_ns > figure_before


def test_report_renders(run):
    workdir = run.parents[1]
    snakemake(workdir, "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text(errors="replace")
    assert "tradeoff_he" in html



def test_added_variant_runs_only_its_jobs_with_one_engine_start(run, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(run.parents[1], workdir, symlinks=True)  # .snakemake and the cache too
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["variants"]["top2"] = {"strategy": "topk", "k": 2}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    new_run = workdir / "results/micro"
    kept = [new_run / f"{stage}/he/{v}{ext}" for v in ("dense", "top1")
            for stage, ext in (("infer", "/generations.parquet"), ("execute", ".parquet"), ("fidelity", ".parquet"))]
    before = [p.stat().st_mtime_ns for p in kept]
    snakemake(workdir)
    generate = table(new_run / "generate/he.parquet", GENERATE_SCHEMA).set_index("variant")
    assert generate.loc["top2", "generated_samples"] == TASKS and generate.loc["top2", "engine_start"] == 0
    for v in ("dense", "top1"):  # from the cache, no engine
        assert generate.loc[v, "resumed_samples"] == TASKS and generate.loc[v, "engine_start"] == -1
    assert [p.stat().st_mtime_ns for p in kept] == before  # the other variants' jobs did not run
    scores = table(new_run / "score/scores.parquet", SCORES_SCHEMA).set_index(["benchmark", "variant"])
    assert scores.loc[("he", "top2"), "experts_per_token"] == pytest.approx(2.0)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
