"""Config mistakes that would be silent, late or crash, refused while Snakemake plans.

Each check returns the errors it finds as 'file:line: key.path: what and why' lines (via
config_where.ConfigSource); `check_plan` raises them together before any job starts. What
is allowed but dangerous (`execution.sandbox: none`) is returned as a notice for the
terminal, and marked in the summary and report by the stages that read the config.
"""

from __future__ import annotations

import glob
import os
import shutil
import urllib.request
from pathlib import Path

from skipbench.config_where import ConfigError, ConfigSource

DENSE = "dense"
EXTERNAL = "external"  # the variant name of a benchmark's external samples (rules/common.smk)
THIS_MACHINE = "this-machine"  # the roofline profile measured by the stage itself


def generating_benchmarks(config: dict) -> dict[str, list[str]]:
    """benchmark -> the variants generated for it (its `variants:` list, default all)."""
    return {b: list(bench.get("variants", config["variants"])) for b, bench in config["benchmarks"].items()}


def check_dense(config: dict, src: ConfigSource) -> list[str]:
    """Every Δ, McNemar test, fidelity and measured speedup is against the variant named dense."""
    variants, errors = config["variants"], []
    if EXTERNAL in variants:
        errors.append(str(src.error(("variants", EXTERNAL), f"the name {EXTERNAL!r} is reserved for a benchmark's "
                                    "external samples (benchmarks.<b>.samples): rename this variant")))
    generating = {b: v for b, v in generating_benchmarks(config).items() if v}
    if DENSE not in variants:
        if generating:
            errors.append(str(src.error(("variants",), f"no variant named {DENSE!r}: every Δ, McNemar p, fidelity and "
                                        "speedup is measured against it; add `dense: {strategy: dense}`")))
        return errors
    if variants[DENSE].get("strategy") != DENSE or len(variants[DENSE]) > 1:
        errors.append(str(src.error(("variants", DENSE), f"{variants[DENSE]!r}: the variant named {DENSE!r} is the "
                                    "baseline of every comparison and must be exactly {strategy: dense}; give this "
                                    "setting another name")))
    for b, names in generating.items():
        if DENSE not in names:
            errors.append(str(src.error(("benchmarks", b, "variants"), f"{names!r} leaves out {DENSE!r}: the benchmark's "
                                        "Δ and McNemar columns compare against it")))
    swept = config.get("throughput", {}).get("variants")
    if swept and DENSE not in swept:
        errors.append(str(src.error(("throughput", "variants"), f"{swept!r} leaves out {DENSE!r}: measured speedups are "
                                    "tokens/s over dense's in the same sweep")))
    return errors


def check_hardware(config: dict, src: ConfigSource, profiles_dir: Path) -> list[str]:
    """Roofline and report hardware names have a profile in config/hardware/."""
    known = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
    roofline = config.get("roofline", {})
    named = [(("roofline", "hardware", i), h) for i, h in enumerate(roofline.get("hardware", []))]
    named += [(("roofline", "kernel_bench", h), h) for h in roofline.get("kernel_bench", {})]
    if config.get("report", {}).get("hardware"):
        named.append((("report", "hardware"), config["report"]["hardware"]))
    return [str(src.error(path, f"{name!r} has no profile {profiles_dir}/{name}.yaml; known: {known}"))
            for path, name in named if name not in known]  # fmt: skip


def check_lengths(config: dict, src: ConfigSource) -> list[str]:
    """The engine's context holds a prompt plus the tokens asked of it (else the engine
    refuses after its start, tens of seconds to minutes in)."""
    limit = config.get("engine", {}).get("max_model_len")
    if limit is None:
        return []
    errors = []
    new = config.get("generation", {}).get("max_new_tokens")
    if new is not None and new >= limit:
        errors.append(str(src.error(("engine", "max_model_len"), f"{limit} leaves no room for a prompt before "
                                    f"generation.max_new_tokens = {new}; raise it above {new} + the longest prompt")))
    sweep = config.get("throughput", {})
    if (sweep.get("prompt_len") or 0) + sweep.get("output_len", 0) > limit:
        errors.append(str(src.error(("throughput",), f"prompt_len {sweep.get('prompt_len')} + output_len "
                                    f"{sweep.get('output_len')} exceed engine.max_model_len = {limit}")))
    return errors


def visible_gpus() -> int:
    """GPUs this machine shows (device nodes: no CUDA import, no driver call, instant)."""
    nvidia = len(glob.glob("/dev/nvidia[0-9]*"))
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        nvidia = min(nvidia, len([d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]))
    return nvidia + (1 if os.path.exists("/dev/kfd") else 0)


def free_bytes(path: Path) -> int:
    """Free space on the file system that would hold `path` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_machine(config: dict, src: ConfigSource, gpus: int, free: int) -> list[str]:
    """A GPU preset needs the GPUs it asks for and room for its download, known before the
    download starts (a 31 GB download on a machine that cannot run it helps no one)."""
    errors = []
    wanted = config.get("engine", {}).get("gpus", 0)
    if wanted > gpus:
        errors.append(str(src.error(("engine", "gpus"), f"{wanted} GPUs per inference job, this machine shows {gpus} "
                                    "(/dev/nvidia*, CUDA_VISIBLE_DEVICES): run this preset on a GPU machine, or "
                                    "submit it with a cluster executor (profiles/slurm, profiles/kubernetes, or `--config site=cluster`)")))
    size = config.get("model", {}).get("huggingface", {}).get("size_gb")
    if config["model"]["source"] == "huggingface" and size and size * 1e9 > free:
        errors.append(str(src.error(("model", "huggingface", "size_gb"), f"the download needs {size} GB, "
                                    f"{free / 1e9:.1f} GB are free under results/")))
    return errors


def reachable(url: str, timeout_s: float = 3.0) -> bool:
    """One HEAD request, no retries: planning must not wait on a network that is not there."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means: cannot download it now
        return False


def check_downloads(config: dict, src: ConfigSource, calibrated: bool, probe=reachable) -> list[str]:
    """An EvalPlus dataset that is not downloaded yet must be downloadable (else calibrate or
    infer fails after a model has been trained or loaded)."""
    from skipbench.benchmarks.tasks import DATASETS
    from skipbench.infer.calibrate import DEFAULT_CALIBRATION
    from skipbench.config_check import needs_download
    from evalplus.data.utils import get_dataset_metadata

    wanted = [(("benchmarks", b, "dataset"), bench) for b, bench in config["benchmarks"].items()]
    if calibrated:
        wanted.append((("calibration", "dataset"), DEFAULT_CALIBRATION | config.get("calibration", {})))
    errors = []
    for path, bench in wanted:
        if bench.get("dataset") in DATASETS and needs_download(bench):
            src_ = DATASETS[bench["dataset"]]
            url = get_dataset_metadata(src_.release, src_.version, mini=False)[0]
            if not probe(url):
                errors.append(str(src.error(path, f"{bench['dataset']} is not downloaded and {url} cannot be reached "
                                            f"from here: set `path:` to a local copy or ${src_.env}")))
    return errors


def check_plan(config: dict, src: ConfigSource, root: Path, calibrated: bool, local: bool) -> list[str]:
    """Run every check; raise one ConfigError listing all errors. Returns the notices to
    print before anything runs. `local`: jobs run on this machine (config `site`; Snakemake names its executor only after
    planning, so the profiles of cluster executors set `site: cluster`)."""
    errors = check_dense(config, src) + check_hardware(config, src, root / "config" / "hardware")
    errors += check_lengths(config, src)
    if local:  # on a cluster, the jobs' GPUs, disk and network are not this machine's
        errors += check_machine(config, src, visible_gpus(), free_bytes(root / "results"))
        if not errors:  # a network probe only for an otherwise sound config
            errors += check_downloads(config, src, calibrated)
    if errors:
        raise ConfigError("the config cannot run:\n  " + "\n  ".join(errors))
    notices = []
    if config.get("execution", {}).get("sandbox") == "none":
        notices.append(f"{src.at(('execution', 'sandbox'))}: execution.sandbox is 'none': generated code will run "
                       "WITHOUT isolation (no bubblewrap, no seccomp) under your user; summary.md and the report say so")
    return notices
