"""Stage 7 entry point: summary table and report figures from the runs' Parquet tables."""

from pathlib import Path

from skipbench.jobs import start_job
from skipbench.report import draw_report
from skipbench.report.summary import load_run


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    params = snakemake.params
    runs = [load_run(name, **tables) for name, tables in params.runs.items()]  # this run first
    draw_report(runs, params.benchmarks, Path(snakemake.output.summary).parent, snakemake.output.summary,
                snakemake.output.summary_md, params.deployment_batch, params.hardware, snakemake.output.summary_html)
