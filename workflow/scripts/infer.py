"""Stage 4 entry point: completions of one (benchmark, variant), from its own engine or, with a
shared engine, from the cache the benchmark's `generate` job filled."""

from pathlib import Path

from skipbench.infer.stage import run_infer, write_infer_outputs
from skipbench.jobs import start_job
from skipbench.benchmarks.prompts import prepare_generation
from skipbench_kernels.integration import load_kernel_choice


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    tasks, generation_cfg = prepare_generation(snakemake.params.benchmark, snakemake.params.generation,
                                               snakemake.input.model)
    write = write_infer_outputs if snakemake.params.shared_engine else run_infer
    write(
        model_dir=Path(snakemake.input.model),
        tasks=tasks,
        variant=snakemake.wildcards.variant,
        variant_cfg=snakemake.params.variant,
        engine_cfg=snakemake.params.engine,
        generation_cfg=generation_cfg,
        samples_path=Path(snakemake.output.samples),
        generations_path=Path(snakemake.output.generations),
        summary_path=Path(snakemake.output.summary),
        cache_dir=Path(snakemake.params.cache),
        trace_path=Path(snakemake.output.trace) if snakemake.output.get("trace") else None,
        calibration_path=Path(snakemake.input.calibration) if "calibration" in snakemake.input.keys() else None,
        kernel=load_kernel_choice(snakemake.input.kernels),
        deployment_batch=snakemake.params.deployment_batch,
    )
