"""Cluster profiles: dry runs with the DeepSeek-V3 preset, and the job specs the official
executor plugins generate from the resources each job requests (no cluster needed)."""

import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import IO

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PRESET = "config/presets/deepseek-v3.yaml"


def start_dry_run(profile: str) -> tuple[subprocess.Popen, IO[str], IO[str]]:
    """`snakemake -n --profile P` with the DeepSeek-V3 preset, started (one busy core), and
    the files of its stdout and stderr: a full pipe would stall it while another is awaited."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    cmd = [str(SNAKEMAKE), "-n", "--profile", profile, "--configfile", PRESET, "--replace-workflow-config"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True), out, err


def planned_jobs(proc: subprocess.Popen, out: IO[str], err: IO[str]) -> dict[str, list[dict]]:
    """{rule: [resources of each job]} from a dry run's stdout."""
    proc.wait(timeout=300)
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    jobs: dict[str, list[dict]] = {}
    rule = None
    for line in stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)", line)):
            jobs.setdefault(rule, []).append(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
            rule = None
    return jobs


class Resources(dict):
    """job.resources as the plugins read it: .get() and attribute access."""

    __getattr__ = dict.get


def fake_job(resources: dict, threads: int):
    typed = Resources({k: int(v) if v.lstrip("-").isdigit() else v for k, v in resources.items()})
    return SimpleNamespace(resources=typed, threads=threads)


@pytest.fixture(scope="module")
def dry_runs():
    """{profile: planned jobs}: both dry runs at once, each a single-threaded DAG build of
    the preset (the kubernetes one only where its storage plugin is installed)."""
    profiles = ["profiles/slurm"] + ["profiles/kubernetes"] * bool(importlib.util.find_spec("snakemake_storage_plugin_fs"))
    started = {p: start_dry_run(p) for p in profiles}
    try:
        return {p: planned_jobs(*run) for p, run in started.items()}
    finally:
        for proc, *files in started.values():
            proc.kill()  # a no-op on a finished one; a failed dry run leaves no snakemake behind
            proc.wait()
            for f in files:
                f.close()


@pytest.fixture(scope="module")
def slurm_jobs(dry_runs):
    return dry_runs["profiles/slurm"]


def test_slurm_dry_run_shows_every_stage_with_its_resources(slurm_jobs):
    preset = yaml.safe_load((ROOT / PRESET).read_text())
    n_runs = len(preset["benchmarks"]) * len(preset["variants"])
    assert len(slurm_jobs["infer"]) == n_runs and len(slurm_jobs["execute"]) == n_runs
    assert {"checkpoint", "build_kernels", "infer", "execute", "score", "figures"} <= set(slurm_jobs)
    assert "fp8_convert" not in slurm_jobs, "DeepSeek-V3 is served in FP8 as shipped"
    for job in slurm_jobs["infer"]:  # the preset's 8 GPUs, the profile's model and limits
        assert (job["gpu"], job["gpu_model"], job["tasks_per_gpu"]) == ("8", "h200", "0")
        assert int(job["runtime"]) >= 240 and int(job["mem_mb"]) >= 64000
    assert all("gpu" not in job for job in slurm_jobs["execute"] + slurm_jobs["score"])
    assert slurm_jobs["checkpoint"][0]["runtime"] == "720"


def test_slurm_plugin_builds_the_expected_sbatch_lines(slurm_jobs):
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    def sbatch(rule):
        job = fake_job(slurm_jobs[rule][0], threads=int(slurm_jobs[rule][0]["cpus_per_task"]))
        params = dict(run_uuid="u", slurm_logfile="log", comment_str=rule, account="-A acct",
                      partition=f"-p {job.resources.slurm_partition}", workdir=str(ROOT))
        return get_submit_command(job, params) + set_gres_string(job)

    infer = sbatch("infer")
    assert "--gpus=h200:8" in infer and "--mem 256000" in infer and "-t 480" in infer
    assert "--cpus-per-task=16" in infer and "-p gpu" in infer
    assert "--ntasks-per-gpu" not in infer, "vLLM is one process; 8 tasks would start 8 engines"
    execute = sbatch("execute")
    assert "--gpus" not in execute and "-p cpu" in execute and "--ntasks=1" in execute


def test_kubernetes_profile_maps_gpus_and_nodes():
    """The profile's resources, as the Kubernetes plugin reads them (its dry run needs the
    library inputs marked local(): see docs/scaling.md)."""
    cfg = yaml.safe_load((ROOT / "profiles/kubernetes/config.yaml").read_text())
    assert cfg["executor"] == "kubernetes" and cfg["default-storage-provider"] == "fs"
    for rule in ("infer", "calibrate", "throughput", "build_kernels", "fp8_convert"):
        res = cfg["set-resources"][rule]
        assert res["gpu_manufacturer"] == "nvidia", f"{rule}: without it the plugin adds no GPU toleration"
        assert res["machine_type"]
    for rule in ("execute", "score", "figures"):
        assert "gpu" not in cfg["set-resources"][rule]


def test_slurm_profile_pins_threads_of_every_multithreaded_rule():
    """Rules say `threads: workflow.cores`: on a login node that is the login node's cores."""
    cfg = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    smk = "\n".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    threaded = set(re.findall(r"^rule (\w+):(?:(?!^rule ).)*?threads: workflow\.cores", smk, re.S | re.M))
    assert threaded and threaded <= set(cfg["set-threads"]), threaded - set(cfg["set-threads"])
    for rule, threads in cfg["set-threads"].items():
        assert cfg["set-resources"][rule]["cpus_per_task"] >= threads


def test_kubernetes_dry_run_requests_gpus_per_job(dry_runs):
    """Needs the library inputs marked local() in the rules (lib() in common.smk), else the
    fs storage provider looks for the sources under its prefix."""
    pytest.importorskip("snakemake_storage_plugin_fs")
    jobs = dry_runs["profiles/kubernetes"]
    for job in jobs["infer"]:
        assert (job["gpu"], job["gpu_manufacturer"], job["machine_type"]) == ("8", "nvidia", "p5e.48xlarge")
    assert all("gpu" not in job for job in jobs["execute"])
