"""Stage 6b entry point: teacher-forced KL and top-1 agreement of one variant to dense."""

from pathlib import Path

import torch

from skipbench.score.fidelity import run_fidelity
from skipbench.jobs import start_job
from skipbench.benchmarks.prompts import prepare_generation

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    torch.set_num_threads(snakemake.threads)
    run_fidelity(
        model_dir=Path(snakemake.input.model),
        # the prompts dense was given (chat protocol: rendered in the template)
        tasks=prepare_generation(snakemake.params.benchmark, snakemake.params.generation, snakemake.input.model)[0],
        benchmark=snakemake.wildcards.benchmark,
        dense_generations=Path(snakemake.input.dense),
        variant=snakemake.wildcards.variant,
        variant_cfg=snakemake.params.variant,
        out_path=Path(snakemake.output[0]),
        batch_size=snakemake.params.batch_size,
        calibration_path=Path(snakemake.input.calibration) if "calibration" in snakemake.input.keys() else None,
        noise_floor=Path(snakemake.input.noise_floor) if "noise_floor" in snakemake.input.keys() else None,
        serving_dtype=snakemake.params.serving_dtype,
        deployment_batch=snakemake.params.deployment_batch,
    )
