"""Entry point: an HTML view of one Parquet table for the report."""

from skipbench.logs import log_to
from skipbench.report.report_tables import write_parquet_view

if __name__ == "__main__":
    log_to(snakemake.log[0])
    write_parquet_view(snakemake.input.table, snakemake.output[0], snakemake.wildcards.table)
