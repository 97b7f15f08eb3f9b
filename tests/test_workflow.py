"""The whole DAG on a micro config: every stage runs for real, every table has its schema.

One workflow run (a few minutes on 2 cores) shared by every workflow test of the session
(the `run` fixture of conftest.py, tests/workflow_run.py).
"""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lcb_fixture import SOLUTIONS, write_release
from skipbench.execute import EXECUTE_SCHEMA
from skipbench.infer.stage import GENERATE_SCHEMA, GENERATIONS_SCHEMA, INFER_SUMMARY_SCHEMA
from skipbench.model.checkpoint import TRAINING_SCHEMA
from skipbench.model.fp8 import CONVERT_REPORT_SCHEMA
from skipbench.model.kernel_build import KERNEL_MANIFEST_SCHEMA
from skipbench.model.layout import MANIFEST_SCHEMA
from skipbench.score.stage import SCORES_SCHEMA
from skipbench.speed.replay import REPLAY_SCHEMA
from skipbench.speed.throughput import THROUGHPUT_SCHEMA
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
    replay = table(run / "replay/he.parquet", REPLAY_SCHEMA)
    cpu = replay[replay["path"] == "cpu_eager"].set_index(["variant", "concurrency"])
    assert len(cpu) == 2 * 3 and (cpu["status"] == "measured").all() and cpu["predicted_ms"].notna().all()
    assert cpu.loc[("top1", 1), "distinct_experts"] == 1.0 and cpu.loc[("dense", 1), "distinct_experts"] == 4.0
    assert set(replay.loc[replay["path"] != "cpu_eager", "status"]) == {"not run: no CUDA device"}
    assert "Replayed @1: measured, routed experts, replayed on cpu:" in (run / "figures/summary.md").read_text()


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
    assert dense["routed_per_decode_token"] == pytest.approx(4.0)
    assert top1["routed_per_decode_token"] == pytest.approx(1.0)
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
    (fit,) = (new_run / "replay").glob("fit-*.parquet")
    fit_before, replay_before = fit.stat().st_mtime_ns, pq.read_table(new_run / "replay/he.parquet").to_pandas()
    snakemake(workdir)
    generate = table(new_run / "generate/he.parquet", GENERATE_SCHEMA).set_index("variant")
    assert generate.loc["top2", "generated_samples"] == TASKS and generate.loc["top2", "engine_start"] == 0
    for v in ("dense", "top1"):  # from the cache, no engine
        assert generate.loc[v, "resumed_samples"] == TASKS and generate.loc[v, "engine_start"] == -1
    assert [p.stat().st_mtime_ns for p in kept] == before  # the other variants' jobs did not run
    scores = table(new_run / "score/scores.parquet", SCORES_SCHEMA).set_index(["benchmark", "variant"])
    assert scores.loc[("he", "top2"), "routed_per_decode_token"] == pytest.approx(2.0)
    # the machine's fit is not re-timed, so no other variant's predicted replay time moves
    assert fit.stat().st_mtime_ns == fit_before
    replay = pq.read_table(new_run / "replay/he.parquet").to_pandas()
    assert "top2" in set(replay["variant"])
    key = ["variant", "concurrency", "path"]
    old, new = (r[r["path"] == "cpu_eager"].set_index(key)["predicted_ms"] for r in (replay_before, replay))
    assert new.reindex(old.index).to_numpy() == pytest.approx(old.to_numpy())
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout


def test_external_samples_config_plans_without_a_model_architecture(tmp_path):
    """Benchmarks that only score external samples run no model: no architecture block is
    needed (main: KeyError 'n_routed_experts' while planning), and no model job is planned."""
    write_release(tmp_path / "lcb")
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"task_id": q, "solution": c}) + "\n" for q, c, _ in SOLUTIONS))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "run": "ext", "model": {"source": "synthetic"}, "variants": {"dense": {"strategy": "dense"}},
        "benchmarks": {"lcb": {"dataset": "livecodebench", "path": "lcb/test.jsonl", "samples": "s.jsonl", "variants": []}},
    }))  # fmt: skip
    jobs = snakemake(tmp_path, "-n", "--quiet", "rules").stdout
    assert "execute" in jobs and "score" in jobs
    assert not any(rule in jobs for rule in ("checkpoint", "build_kernels", "infer", "throughput"))


def copied(run: Path, dst: Path, change) -> Path:
    """The finished micro run copied with its metadata and cache (cp -a), its config changed."""
    workdir = dst / "work"
    shutil.copytree(run.parents[1], workdir, symlinks=True)
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    change(cfg)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return workdir


def test_removed_variants_and_changed_throughput_variants_converge(run, tmp_path):
    """The figures read the scores: they must not run before `generate` (a checkpoint) and the
    scores it leads to. `--prioritize figures` makes the scheduler run them as early as the
    DAG allows (before: on the old scores, then never again)."""
    workdir = copied(run, tmp_path, lambda c: (c["variants"].pop("top1"), c["throughput"].update(variants=["dense"])))
    snakemake(workdir, "--prioritize", "figures")
    new_run = workdir / "results/micro"
    scored = set(table(new_run / "score/scores.parquet", SCORES_SCHEMA)["variant"])
    assert scored == {"dense", "external"}
    assert set(pq.read_table(new_run / "figures/summary.parquet").column("variant").to_pylist()) <= scored
    assert "top1" not in (new_run / "figures/summary.md").read_text()
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout


def test_killed_generate_reruns_alone(run, tmp_path):
    """A kill during `generate` leaves its outputs removed and marked incomplete (as Snakemake
    leaves them): the rerun runs it from the cache, and no job after it reruns on the same content."""
    from skipbench.sidecars import record_path

    workdir = copied(run, tmp_path, lambda c: None)
    new_run = workdir / "results/micro"
    outputs = [new_run / "generate/he.parquet", *sorted((new_run / "generate/he").glob("*.json"))]
    for out in outputs:
        marker = record_path(workdir / ".snakemake/incomplete", str(out.relative_to(workdir)))
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text('{"external_jobid": null}')
        out.unlink()
    later = [p for p in new_run.rglob("*") if p.is_file() and p.parts[len(new_run.parts)] in
             ("infer", "execute", "fidelity", "score", "traffic", "roofline", "figures", "views")]
    before = {p: p.stat().st_mtime_ns for p in later}
    snakemake(workdir)
    assert all(out.exists() for out in outputs)
    assert [p for p in later if p.stat().st_mtime_ns != before[p]] == []
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
