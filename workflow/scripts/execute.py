"""Stage 5 entry point: run the samples of one (benchmark, variant) in the sandbox."""

from pathlib import Path

from skipbench.execute import run_execute
from skipbench.jobs import start_job


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    run_execute(
        bench_cfg=snakemake.params.benchmark,
        samples_path=Path(snakemake.input.samples),
        exec_cfg=snakemake.config["execution"],  # params.execution less its bookkeeping
        out_path=Path(snakemake.output.results),
        threads=snakemake.threads,
    )
