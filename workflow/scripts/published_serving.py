"""Published serving measurements beside the cost model's predictions (config/hardware/published_serving.yaml)."""

from skipbench.logs import log_to
from skipbench.speed.published import write_published

if __name__ == "__main__":
    log_to(snakemake.log[0])
    write_published(snakemake.output[0])  # config/hardware/published_serving.yaml of this checkout
