"""Stage 6 entry point: score every (benchmark, variant) into one table."""

from pathlib import Path

from skipbench.logs import log_to
from skipbench.score import VariantInputs, run_score


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    log_to(snakemake.log[0])
    run_score([VariantInputs(**entry) for entry in snakemake.params.entries], Path(snakemake.output.scores))
