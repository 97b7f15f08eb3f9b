"""Stage 4 with a shared engine: fill the batch cache of every variant of one benchmark
(resuming what is cached), then mark each variant done."""

from pathlib import Path

from skipbench.infer.stage import generate_variants
from skipbench.infer.marks import write_marks
from skipbench.jobs import start_job
from skipbench.benchmarks.prompts import prepare_generation
from skipbench_kernels.integration import load_kernel_choice


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    tasks, generation_cfg = prepare_generation(snakemake.params.benchmark, snakemake.params.generation,
                                               snakemake.input.model)
    report = generate_variants(
        model_dir=Path(snakemake.input.model),
        tasks=tasks,
        variants=snakemake.params.variants,
        engine_cfg=snakemake.params.engine,
        generation_cfg=generation_cfg,
        cache_dir=Path(snakemake.params.cache),
        report_path=Path(snakemake.output.report),
        tracing=snakemake.params.trace,
        calibration_path=Path(snakemake.input.calibration) if "calibration" in snakemake.input.keys() else None,
        kernel=load_kernel_choice(snakemake.input.kernels),
        deployment_batch=snakemake.params.deployment_batch,
    )
    write_marks(report, snakemake.output.marks)
