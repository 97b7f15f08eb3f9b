"""Stage 7 driver: summary table and every report figure from the runs' tables.

Reads only Parquet tables written upstream (scores, throughput sweep, roofline
predictions, traffic), so `snakemake -R figures` redraws in seconds without rerunning
anything. The list of files written is fixed by the benchmarks (see `report_files`);
absent optional inputs give "no data" figures, never missing files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
from skipbench.progress import track

from skipbench.io import write_text
from skipbench.report.figures import (
    STYLE,
    fidelity_figure,
    pareto_table_figure,
    predicted_figure,
    save,
    speedup_columns,
    tradeoff_figure,
)
from skipbench.report.figures_traffic import layers_figure, speedup_figure
from skipbench.report.report_tables import markdown_page
from skipbench.report.summary import RunTables, build_summary
from skipbench.report.summary_table import markdown, subsets_markdown, write_summary

log = logging.getLogger(__name__)

PER_BENCHMARK = ("tradeoff", "predicted", "fidelity", "layers", "pareto")  # figures drawn per benchmark
ONCE = ("speedup",)  # figures drawn once for all benchmarks


def report_files(out_dir, benchmarks: list[str]) -> dict[str, list[Path]]:
    """{figure stem: [png, svg]} of every figure the stage writes, in drawing order."""
    stems = [f"{kind}_{b}" for b in benchmarks for kind in PER_BENCHMARK] + list(ONCE)
    return {s: [Path(out_dir) / f"{s}.{ext}" for ext in ("png", "svg")] for s in stems}


def draw_report(
    runs: list[RunTables],
    benchmarks: list[str],
    out_dir,
    summary_parquet,
    summary_markdown,
    deployment_batch: int,
    hardware: list[str],
    summary_html=None,
) -> dict:
    """Write the summary (Parquet + Markdown + HTML view) and every figure of `report_files`.

    runs: this run first, then the combined ones (figures facet by run = model);
    hardware: roofline profiles in the order the summary prefers them.
    Returns {"summary": DataFrame, "fronts": {(figure, benchmark): {(run, split, x): [variants]}}}.
    """
    for t in runs:
        extra = sorted(set(t.scores["benchmark"]) - set(benchmarks))
        if extra:
            log.warning("%s: benchmarks %s are not in this run's config: left out of the figures", t.run, extra)
    summary = build_summary(runs, deployment_batch, hardware)
    per_subset = subsets_markdown(runs)
    write_summary(summary, summary_parquet, summary_markdown, per_subset)
    if summary_html:  # the report's view of the same table
        write_text(summary_html, markdown_page("Summary", markdown(summary) + per_subset))
    out_dir = Path(out_dir)
    columns = speedup_columns(runs, hardware)
    fronts = {}
    with plt.rc_context(STYLE):
        for stem in track(report_files(out_dir, benchmarks), desc="figures", unit="figure"):
            kind, _, benchmark = stem.partition("_")
            if kind == "tradeoff":
                fig, fronts[(kind, benchmark)] = tradeoff_figure(runs, benchmark)
            elif kind == "predicted":
                fig, fronts[(kind, benchmark)] = predicted_figure(runs, benchmark, deployment_batch, columns)
            elif kind == "fidelity":
                fig = fidelity_figure(runs, benchmark)
            elif kind == "layers":
                fig = layers_figure(runs, benchmark, deployment_batch)
            elif kind == "pareto":
                fig = pareto_table_figure(summary, benchmark)
            else:
                fig = speedup_figure(runs, columns)
            save(fig, out_dir / stem)
            log.info("drew %s", stem)
    return {"summary": summary, "fronts": fronts}
