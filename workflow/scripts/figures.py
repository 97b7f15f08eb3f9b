"""Stage 7 entry point: draw the trade-off figures from the scores table."""

from pathlib import Path

from skipbench.figures import draw_tradeoffs
from skipbench.logs import log_to


# Worker processes started with spawn (vLLM) re-import this module: act only as main.
if __name__ == "__main__":
    log_to(snakemake.log[0])
    draw_tradeoffs(Path(snakemake.input.scores), Path(snakemake.output[0]).parent, snakemake.params.run)
