# Paths, wildcards and helpers shared by the stage rules. Rules only wire files together;
# the logic lives in the skipbench library (workflow/skipbench/).
import functools
import os
import sys
from pathlib import Path

from skipbench import sidecars

RUN = f"results/{config['run']}"
# envs/*.yaml install this checkout as `-e ${SKIPBENCH_ROOT}` (pip expands it): a relative
# path would resolve against Snakemake's copy of the env file under .snakemake/conda.
os.environ.setdefault("SKIPBENCH_ROOT", str(workflow.basedir))
MODEL = config["model"]
BENCHMARKS = config["benchmarks"]
VARIANTS = config["variants"]
EXTERNAL = "external"  # variant name of samples produced elsewhere (benchmarks.<b>.samples)
# Snakemake's rerun records of this run's files also live beside them: a results folder
# copied without .snakemake/ reruns what changed (skipbench.sidecars; saved again at the end).
sidecars.sync(RUN)


wildcard_constraints:
    benchmark="|".join(BENCHMARKS),
    variant="[A-Za-z0-9._-]+",


def variants_of(benchmark):
    """Variants evaluated on a benchmark: the configured ones, plus external samples."""
    names = list(BENCHMARKS[benchmark].get("variants", VARIANTS))
    if "samples" in BENCHMARKS[benchmark]:
        names.append(EXTERNAL)
    return names


def generated_variants(benchmark):
    """Variants this workflow generates completions for on a benchmark."""
    return [v for v in variants_of(benchmark) if v != EXTERNAL]


# A config whose benchmarks all score external samples runs no model: no generation and, unless
# throughput.variants names some, no throughput sweep; its model block needs no architecture.
GENERATES = any(generated_variants(b) for b in BENCHMARKS)
MODEL_RUNS = GENERATES or bool(config["throughput"].get("variants"))


# Teacher-forced fidelity (rules/fidelity.smk) runs the transformers oracle in fp32 on the CPU:
# the synthetic model only. A downloaded checkpoint (DeepSeek-V3: 671B parameters) does not fit;
# its scores leave the KL columns empty rather than start a job that cannot finish.
TEACHER_FORCED = MODEL["source"] == "synthetic"


def tasks_of(benchmark):
    """The fields of a benchmark that choose its tasks (a param of the jobs that generate
    for it): its external samples and variant list are other jobs' business."""
    return {k: v for k, v in BENCHMARKS[benchmark].items() if k not in ("samples", "variants")}


# The benchmarks this workflow generates completions for, with the fields that choose their tasks.
GENERATED_BENCHMARKS = {b: tasks_of(b) for b in BENCHMARKS if generated_variants(b)}


def variant_files(benchmark, variant):
    """The files the score stage reads for one (benchmark, variant)."""
    files = {"execution": f"{RUN}/execute/{benchmark}/{variant}.parquet"}
    if variant != EXTERNAL:  # external samples have no generation record
        infer = f"{RUN}/infer/{benchmark}/{variant}"
        files |= {"generations": f"{infer}/generations.parquet", "summary": f"{infer}/summary.parquet"}
        if TEACHER_FORCED and "dense" in generated_variants(benchmark):  # on dense's completions
            files["fidelity"] = f"{RUN}/fidelity/{benchmark}/{variant}.parquet"
    return files


# Benchmarks scored per subset of their tasks too (LiveCodeBench: per difficulty).
SUBSET_SCORED = [b for b, cfg in BENCHMARKS.items() if cfg["dataset"] == "livecodebench"]
SCORED = [
    {"benchmark": b, "variant": v, **variant_files(b, v)} for b in BENCHMARKS for v in variants_of(b)
]


def code(script, files=()):
    """Content hash of a rule's script (workflow/scripts/<script>.py), of every module of this
    project it imports (skipbench.provenance), and of other sources it reads (`files`, under
    the repository root). A param: editing any of them reruns the rule (Snakemake's params
    trigger), while a clone, which gives every file a new mtime, does not. It stands in for
    Snakemake's `code` trigger, which compares a script's mtime with the outputs' (so the
    profiles leave it out)."""
    return _code(script, tuple(files))


@functools.cache
def _code(script, files):
    from skipbench.io import content_hash
    from skipbench.provenance import source_closure

    root = Path(workflow.basedir)
    sources = source_closure(root / f"workflow/scripts/{script}.py",
                             {"skipbench": root / "workflow/skipbench", "skipbench_kernels": root / "kernels"})
    return content_hash(sources + [root / f for f in files])


def memorised_tasks():
    """What the synthetic model is trained on (skipbench.benchmarks.tasks.memorised_tasks): the
    tasks of every benchmark it generates for. A download trains on nothing. A param: an
    added benchmark retrains only if it brings tasks not memorised yet."""
    if MODEL["source"] != "synthetic":
        return []
    from skipbench.benchmarks.tasks import memorised_tasks as tasks_to_memorise

    return tasks_to_memorise({name: bench for name, bench in BENCHMARKS.items() if generated_variants(name)})


def engine_model_dir(wildcards=None):
    """The checkpoint the engine loads: converted when a dtype conversion is configured."""
    if MODEL.get("convert", "none") == "none":
        return f"{RUN}/model/checkpoint"
    return f"{RUN}/model/converted"


def samples_for(wildcards):
    if wildcards.variant == EXTERNAL:
        return BENCHMARKS[wildcards.benchmark]["samples"]
    return f"{RUN}/infer/{wildcards.benchmark}/{wildcards.variant}/samples.jsonl"


def calibration_of(variants):
    """The calibration table (a DAG input), if a strategy of `variants` reads it."""
    from skipbench.skip.strategies import SkipRule

    if any(SkipRule.from_config(VARIANTS[v]).needs_calibration for v in variants):
        return {"calibration": f"{RUN}/calibrate/calibration.parquet"}
    return {}


def calibration_for(wildcards):
    """The calibration table, for variants whose strategy reads it (a DAG input)."""
    return calibration_of([wildcards.variant])


TRACING = config["engine"].get("enforce_eager", False) or config["engine"]["name"] == "transformers"


def _swaps_rules():
    from skipbench.infer.engines import swaps_rules

    return swaps_rules(config["engine"])


# One engine per benchmark (infer) and per throughput sweep serves every variant: the
# engine can switch skip rules (rules/infer.smk).
SHARED_ENGINE = _swaps_rules()


def generation_mark(benchmark, variant):
    """The file `generate` writes when a variant's cache is complete. Named by a hash of the
    variant's config: an added or edited variant has no mark yet, so its infer job (and only
    its) is planned; the others read their marks as ancient() (generate rewrites them all)."""
    from skipbench.infer.marks import mark_name

    return f"{RUN}/generate/{benchmark}/{mark_name(variant, VARIANTS[variant])}"


def generated_for(wildcards):
    """With a shared engine: the variant's mark from its benchmark's `generate` job."""
    if not SHARED_ENGINE:
        return {}
    return {"generated": ancient(generation_mark(wildcards.benchmark, wildcards.variant))}


def after_generate(benchmarks):
    """A DAG input of every job that reads completions (directly or through other tables):
    the `generate` reports of `benchmarks`, as ancient() (their mtime is no reason to rerun).

    Why: `generate` is a checkpoint, and Snakemake judges the jobs after a checkpoint that
    is to run only once it has run (dag.py update_needrun masks them; update_checkpoint_
    dependencies then re-plans the jobs that depend on it DIRECTLY, with fresh reasons).
    A job that reads completions without this edge (the figures, through the throughput
    tables) could run before `generate` on the old scores and, being finished, never be
    judged again; and a job planned through a killed `generate` (its outputs gone) would
    keep that reason to rerun. With the edge, each such job waits for `generate` and is
    then judged on its own inputs, params and code."""
    if not SHARED_ENGINE:
        return []
    return [ancient(f"{RUN}/generate/{b}.parquet") for b in benchmarks if generated_variants(b)]


def after_generate_for(wildcards):
    """after_generate for a job of one (benchmark, variant); external samples need none."""
    if getattr(wildcards, "variant", None) == EXTERNAL:
        return []
    return after_generate([wildcards.benchmark])


FIGURES = [f"{RUN}/figures/tradeoff_{b}.{ext}" for b in BENCHMARKS for ext in ("png", "svg")]


def _check_config():
    """Reject every config mistake before any compute, naming file, line and key
    (skipbench.config_check, skipbench.plan_checks): strategy parameters that do not fit the
    model, datasets, calibration, external samples, the dense baseline, hardware profiles,
    lengths, GPUs and disk. Downloaded models' routing is checked after the download, before
    an engine starts. Prints what is allowed but dangerous (sandbox none) before any job."""
    from skipbench import config_check, plan_checks
    from skipbench.skip.strategies import SkipRule

    src = CONFIG_SOURCE
    for name, bench in BENCHMARKS.items():
        if unknown := sorted(set(bench.get("variants", [])) - set(VARIANTS)):
            raise src.error(("benchmarks", name, "variants"), f"names unknown variants {unknown}")
    if unknown := sorted(set(config["throughput"].get("variants", [])) - set(VARIANTS)):
        raise src.error(("throughput", "variants"), f"names unknown variants {unknown}; known: {sorted(VARIANTS)}")
    # no model runs when every benchmark only scores external samples: no architecture needed
    shape = None
    if MODEL["source"] == "synthetic" and MODEL_RUNS:
        try:
            shape = config_check.synthetic_shape(MODEL["synthetic"].get("architecture", {}))
        except ValueError as e:
            raise src.error(("model", "synthetic", "architecture"), str(e)) from None
    for name, variant in VARIANTS.items():
        try:
            SkipRule.from_config(variant)
            if shape is not None:
                config_check.check_variants({name: variant}, shape)
        except ValueError as e:
            raise src.error(("variants", name), str(e)) from None
    notices = plan_checks.check_plan(config, src, Path(workflow.basedir), calibrated=bool(_calibrated()),
                                     local=config["site"] == "local")  # fmt: skip
    task_ids = _located(src, ("benchmarks",), config_check.check_benchmarks, BENCHMARKS)
    for name, bench in BENCHMARKS.items():
        if "samples" in bench and name in task_ids:  # absent: its dataset is not here yet
            _located(src, ("benchmarks", name, "samples"), config_check.check_samples_file, bench["samples"],
                     task_ids[name], f"benchmarks.{name}")  # fmt: skip
    if _calibrated():
        _located(src, ("calibration",), config_check.check_calibration, config.get("calibration", {}),
                 GENERATED_BENCHMARKS)
    for line in notices:
        print(f"\n!! {line}\n", file=sys.stderr)


def _calibrated():
    return any(calibration_of([v]) for b in BENCHMARKS for v in generated_variants(b))


def _located(src, path, check, *args):
    """`check(*args)`, its ConfigError prefixed with the file and line of the key `path`
    (the messages name the key below it)."""
    from skipbench.config_check import ConfigError

    try:
        return check(*args)
    except ConfigError as e:
        message = str(e)
        key = message.split(" ", 1)[0].rstrip(":").split(".")  # "benchmarks.he ..." -> its own line when a file sets it
        where = src.at(tuple(key)) if tuple(key[: len(path)]) == path else src.at(path)
        raise ConfigError(f"{where}: {message}") from None


_check_config()
