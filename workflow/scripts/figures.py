"""Stage 7 entry point: draw the trade-off figures from the scores table."""

from pathlib import Path

from skipbench.figures import draw_tradeoffs
from skipbench.logs import log_to

log_to(snakemake.log[0])
draw_tradeoffs(Path(snakemake.input.scores), Path(snakemake.params.outdir), snakemake.params.run)
