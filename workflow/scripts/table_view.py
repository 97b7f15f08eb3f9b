"""Entry point: an HTML view of each of the run's Parquet tables for the report."""

from skipbench.logs import log_to
from skipbench.report.report_tables import write_parquet_view

if __name__ == "__main__":
    log_to(snakemake.log[0])
    for table, view, title in zip(snakemake.input, snakemake.output, snakemake.params.titles):
        write_parquet_view(table, view, title)
