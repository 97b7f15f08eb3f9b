"""Entry point: an HTML view of one Parquet table for the report."""

from skipbench.jobs import start_job
from skipbench.report.report_tables import write_parquet_view

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    write_parquet_view(snakemake.input.table, snakemake.output[0], snakemake.wildcards.table)
