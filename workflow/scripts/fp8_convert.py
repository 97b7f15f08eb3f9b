"""Stage 2 entry point: convert the checkpoint between FP8 blocks and BF16."""

from pathlib import Path

from skipbench.model.fp8 import CONVERT_REPORT_SCHEMA, convert_checkpoint
from skipbench.io import write_table
from skipbench.jobs import start_job


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    report = convert_checkpoint(
        Path(snakemake.input.checkpoint), Path(snakemake.output.converted), snakemake.params.direction
    )
    write_table(snakemake.output.report, report, CONVERT_REPORT_SCHEMA)
