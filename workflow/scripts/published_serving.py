"""Published serving measurements beside the cost model's predictions (config/hardware/published_serving.yaml)."""

from skipbench.jobs import start_job
from skipbench.speed.published import write_published

if __name__ == "__main__":
    start_job(snakemake)  # log, die with Snakemake, hold the outputs
    write_published(snakemake.output[0])  # config/hardware/published_serving.yaml of this checkout
