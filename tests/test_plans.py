"""What a change reruns, read from dry runs of a finished run faked with `--touch`.

The fixture plans the micro workflow (test_workflow.micro_config), creates every output,
then `snakemake --touch --forceall` records Snakemake's metadata as a real run would
(params, code, input sets), in seconds instead of a workflow run. Each test copies it.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_workflow import ROOT, SNAKEMAKE, micro_config

pytestmark = pytest.mark.slow  # a handful of Snakemake invocations: minutes on a busy machine


def snakemake(workdir: Path, *args: str, snakefile: Path = ROOT / "Snakefile") -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(snakefile), "--directory", str(workdir), "--cores", "1",
           "--configfile", str(workdir / "config.yaml"), "--replace-workflow-config", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts by rule from a dry run's "Job stats" table ({} when nothing is planned)."""
    lines = proc.stdout.splitlines()
    if "Job stats:" not in lines:
        return {}
    jobs = {}
    for line in lines[lines.index("Job stats:") + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("finished")
    (workdir / "config.yaml").write_text(yaml.safe_dump(micro_config(workdir)))
    fake_finished(workdir)
    return workdir


def fake_finished(workdir: Path) -> None:
    """Create every output the dry run plans, then record them as a run would."""
    for line in snakemake(workdir, "-n").stdout.splitlines():
        if m := re.match(r"\s+output: (.*)", line):
            for out in m.group(1).split(", "):
                path = workdir / out
                if path.name in ("checkpoint", "converted"):  # directory() outputs
                    path.mkdir(parents=True, exist_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
    snakemake(workdir, "--touch", "--forceall")
    assert planned_jobs(snakemake(workdir, "-n")) == {}


def copy_of(finished: Path, dst: Path, metadata: bool = True) -> Path:
    """The working directory copied with its mtimes (cp -a); without .snakemake: a fresh clone's."""
    shutil.copytree(finished, dst, symlinks=True, ignore=None if metadata else shutil.ignore_patterns(".snakemake"))
    return dst


def edit_config(workdir: Path, change) -> None:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    change(cfg)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_added_external_benchmark_does_not_touch_the_checkpoint(finished, tmp_path):
    workdir = copy_of(finished, tmp_path / "work")
    edit_config(workdir, lambda c: c["benchmarks"].update(
        he_more={"dataset": "humaneval", "tasks": 3, "samples": "canonical.jsonl", "variants": []}))
    jobs = planned_jobs(snakemake(workdir, "-n"))
    # its own execution and EvalPlus-format results, then what reads every benchmark: the
    # scores (and their HTML views: scores, LiveCodeBench subsets), the figures
    assert jobs == {"execute": 1, "evalplus_results": 1, "score": 1, "table_views": 1, "figures": 1, "all": 1}, jobs


def add_variant(cfg: dict) -> None:
    cfg["variants"]["top2"] = {"strategy": "topk", "k": 2}


def test_added_variant_plans_only_its_own_jobs(finished, tmp_path):
    workdir = copy_of(finished, tmp_path / "work")
    edit_config(workdir, add_variant)
    proc = snakemake(workdir, "-n")
    jobs = planned_jobs(proc)
    # the benchmark's generate (one engine start; the others resume from the cache), the new
    # variant's own jobs, then what reads every variant: the traffic replay and the roofline
    # it feeds (seconds), the measured replay (its machine fit is kept), scores, the tables'
    # HTML views, the figures
    assert jobs == {"generate": 1, "infer": 1, "execute": 1, "evalplus_results": 1, "fidelity": 1,
                    "traffic": 1, "roofline": 1, "replay": 1, "score": 1, "table_views": 1, "figures": 1,
                    "all": 1}, jobs
    assert "wildcards: benchmark=he, variant=top2" in proc.stdout


def test_edited_variant_plans_only_its_own_jobs(finished, tmp_path):
    workdir = copy_of(finished, tmp_path / "work")
    edit_config(workdir, lambda c: c["variants"]["top1"].update(k=2))
    proc = snakemake(workdir, "-n")
    jobs = planned_jobs(proc)
    assert jobs.get("infer") == 1 and jobs.get("execute") == 1 and jobs.get("generate") == 1, jobs
    assert "wildcards: benchmark=he, variant=top1" in proc.stdout
    assert "variant=dense" not in proc.stdout


def test_removed_variant_reruns_no_variant(finished, tmp_path):
    workdir = copy_of(finished, tmp_path / "work")
    edit_config(workdir, lambda c: (c["variants"].pop("top1"), c["throughput"].update(variants=["dense"])))
    jobs = planned_jobs(snakemake(workdir, "-n"))
    assert not {"infer", "execute", "evalplus_results"} & set(jobs), jobs


def test_fresh_clone_with_copied_results_plans_nothing(finished, tmp_path):
    """Results made before the clone: older than every source file of the checkout, and no
    .snakemake metadata. The default profile's triggers (no mtime check of scripts) apply."""
    workdir = copy_of(finished, tmp_path / "work", metadata=False)
    paths = sorted(workdir.rglob("*"))
    sources = [p for p in (ROOT / "workflow").rglob("*") if p.is_file()] + [ROOT / "Snakefile"]
    # shift every mtime by the same amount (their order is kept) to before the oldest source
    shift = max(p.lstat().st_mtime for p in paths) - min(p.stat().st_mtime for p in sources) + 3600
    for path in paths:
        st = path.lstat()
        os.utime(path, (st.st_atime - shift, st.st_mtime - shift), follow_symlinks=False)
    assert planned_jobs(snakemake(workdir, "-n")) == {}


@pytest.mark.parametrize("metadata", [True, False])
def test_copied_results_rerun_what_changed_and_not_for_bookkeeping(finished, tmp_path, metadata):
    """With or without .snakemake/ (cp -a of results alone): the records travel in
    results/<run>/.provenance (skipbench.sidecars)."""
    workdir = copy_of(finished, tmp_path / "work", metadata=metadata)
    original = (workdir / "config.yaml").read_text()
    edit_config(workdir, lambda c: c["execution"].update(uid_base=62000, groundtruth_dir="elsewhere"))
    assert planned_jobs(snakemake(workdir, "-n")) == {}  # bookkeeping: no verdict changes
    (workdir / "config.yaml").write_text(original)
    edit_config(workdir, lambda c: c["execution"].update(timeout_s=30))
    jobs = planned_jobs(snakemake(workdir, "-n"))
    assert jobs.get("execute") == 5, jobs  # he: dense, top1, external; he_wrong, lcb: external
    (workdir / "config.yaml").write_text(original)
    edit_config(workdir, lambda c: c["generation"].update(max_new_tokens=64))
    assert planned_jobs(snakemake(workdir, "-n")).get("generate") == 1


def test_added_external_benchmark_leaves_calibration_and_generation_alone(finished, tmp_path):
    workdir = copy_of(finished, tmp_path / "work")
    edit_config(workdir, lambda c: c["variants"].update(thrcal={"strategy": "threshold", "beta": "calibrated"}))
    fake_finished(workdir)  # a finished run with a calibrated variant
    edit_config(workdir, lambda c: c["benchmarks"].update(
        he_more={"dataset": "humaneval", "tasks": 3, "samples": "canonical.jsonl", "variants": []}))
    jobs = planned_jobs(snakemake(workdir, "-n"))
    assert not {"calibrate", "generate", "infer", "fidelity"} & set(jobs), jobs
    assert jobs.get("execute") == 1, jobs


def test_deleted_intermediate_is_rebuilt(finished, tmp_path):
    workdir = copy_of(finished, tmp_path / "work")
    shutil.rmtree(workdir / "results/micro/infer/he/dense")
    proc = snakemake(workdir, "-n")
    assert planned_jobs(proc).get("infer") == 1 and "wildcards: benchmark=he, variant=dense" in proc.stdout
