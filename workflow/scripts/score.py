"""Stage 6 entry point: score every (benchmark, variant) into one table."""

from pathlib import Path

from skipbench.logs import log_to
from skipbench.score.stage import VariantInputs, run_score
from skipbench.score.subsets import score_subsets


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    log_to(snakemake.log[0])
    inputs = [VariantInputs(**entry) for entry in snakemake.params.entries]
    run_score(inputs, Path(snakemake.output.scores))
    score_subsets(inputs, snakemake.params.benchmarks, Path(snakemake.output.subsets))
