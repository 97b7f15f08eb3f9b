"""Stage 6 entry point: score every (benchmark, variant) into one table."""

from pathlib import Path

from skipbench.jobs import start_job
from skipbench.score.stage import VariantInputs, run_score
from skipbench.score.subsets import score_subsets


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    inputs = [VariantInputs(**entry) for entry in snakemake.params.entries]
    run_score(inputs, Path(snakemake.output.scores))
    score_subsets(inputs, snakemake.params.benchmarks, Path(snakemake.output.subsets))
