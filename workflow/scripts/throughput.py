"""Throughput sweep entry point: every throughput variant, every concurrency level, in one job."""

from pathlib import Path

from skipbench.jobs import start_job
from skipbench.benchmarks.prompts import prepare_generation
from skipbench_kernels.integration import load_kernel_choice
from skipbench.speed.throughput import run_throughput


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    sweep = snakemake.params.sweep
    run_throughput(
        model_dir=Path(snakemake.input.model),
        variants=snakemake.params.variants,
        engine_cfg=snakemake.params.engine,
        prompts=[t.prompt for t in prepare_generation(snakemake.params.benchmark, {"prompt": snakemake.params.prompt},
                                                      snakemake.input.model)[0]],
        concurrency=sweep["concurrency"],
        output_len=sweep["output_len"],
        out_paths={v: Path(out) for v, out in zip(snakemake.params.variants, snakemake.output, strict=True)},
        prompt_len=sweep.get("prompt_len"),
        rounds=sweep["rounds"],
        seed=snakemake.params.seed,
        cache_dir=Path(snakemake.params.cache),
        calibration_path=Path(snakemake.input.calibration) if "calibration" in snakemake.input.keys() else None,
        kernel=load_kernel_choice(snakemake.input.kernels),
    )
