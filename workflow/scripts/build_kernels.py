"""Stage 3 entry point: build and self-test the kernels, write the manifest."""

from pathlib import Path

from skipbench.model.kernel_build import build_kernels
from skipbench.jobs import start_job


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    build_kernels(snakemake.params.kernels, Path(snakemake.input.model), Path(snakemake.output.manifest),
                  tensor_parallel_size=snakemake.params.tensor_parallel_size)
