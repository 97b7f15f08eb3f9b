"""Entry point: an HTML view of each of the run's Parquet tables for the report."""

from skipbench.jobs import start_job
from skipbench.report.report_tables import write_parquet_view

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    for table, view, title in zip(snakemake.input.tables, snakemake.output, snakemake.params.titles):
        write_parquet_view(table, view, title)
