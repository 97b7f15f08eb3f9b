"""Entry point: measure a `measure:` hardware profile on this machine, once per machine."""

from pathlib import Path

from skipbench.io import write_json
from skipbench.jobs import start_job
from skipbench.speed.machine import measure_machine

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    write_json(snakemake.output[0], measure_machine(snakemake.wildcards.profile, Path(snakemake.input.model)))
