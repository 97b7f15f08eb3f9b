"""Scores per subset of a benchmark's tasks: LiveCodeBench per difficulty (easy, medium,
hard), as its leaderboard reports them, with the same statistics as the whole benchmark
(score.py): pass@1 with its Wilson interval, the paired difference to dense with its
Newcombe interval, the exact McNemar p and Holm's adjustment over the variants of one
(benchmark, subset) family."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pyarrow as pa

from skipbench.benchmarks.tasks import load_benchmark
from skipbench.io import write_table
from skipbench.score.stage import DENSE, VariantInputs, _read, paired_test, pass_at_1, sample_passes
from skipbench.score.stats import holm

log = logging.getLogger(__name__)

SUBSET_SCORES_SCHEMA = pa.schema([
    ("benchmark", pa.string()),  # config key of the benchmark
    ("variant", pa.string()),
    ("subset_by", pa.string()),  # what splits the tasks: difficulty
    ("subset", pa.string()),  # e.g. easy | medium | hard
    ("tasks", pa.int32()),
    ("pass1", pa.float64()),  # pass@1 on every test of the subset's tasks, 95% Wilson interval
    ("pass1_lo", pa.float64()),
    ("pass1_hi", pa.float64()),
    ("paired", pa.int32()),  # (task, sample) pairs shared with dense; null without a dense run
    ("delta", pa.float64()),  # pass rate minus dense's over those pairs, 95% Newcombe interval
    ("delta_lo", pa.float64()),
    ("delta_hi", pa.float64()),
    ("mcnemar_p", pa.float64()),  # exact two-sided McNemar p, raw
    ("holm_p", pa.float64()),  # Holm-adjusted over the variants of this (benchmark, subset)
])  # fmt: skip


def subsets_of(bench_cfg: dict) -> tuple[str, dict[str, str]] | None:
    """(what splits the tasks, task_id -> subset), or None for a benchmark without subsets."""
    if bench_cfg.get("dataset") != "livecodebench":
        return None
    return "difficulty", {t.task_id: t.lcb.difficulty for t in load_benchmark(bench_cfg).tasks}


def score_subsets(inputs: list[VariantInputs], benchmarks: dict[str, dict], out_path: Path) -> None:
    """SUBSET_SCORES_SCHEMA rows for every (benchmark with subsets, variant, subset)."""
    rows = []
    for name in dict.fromkeys(v.benchmark for v in inputs):
        split = subsets_of(benchmarks[name])
        if split is None:
            continue
        by, subset_of = split
        mine = [v for v in inputs if v.benchmark == name]
        dense = next((v for v in mine if v.variant == DENSE), None)
        dense_pass = sample_passes(_read(dense.execution))["base"] if dense else None
        for subset in dict.fromkeys(sorted(subset_of.values())):
            family = []
            for v in mine:
                passes = sample_passes(_read(v.execution))["base"]
                keep = [subset_of.get(t) == subset for t in passes.index.get_level_values("task_id")]
                p1, lo, hi, n = pass_at_1(passes[keep])
                row = dict(benchmark=name, variant=v.variant, subset_by=by, subset=subset, tasks=n, pass1=p1,
                           pass1_lo=lo, pass1_hi=hi, paired=None, delta=None, delta_lo=None, delta_hi=None,
                           mcnemar_p=None, holm_p=None)  # fmt: skip
                if dense_pass is not None:
                    dkeep = [subset_of.get(t) == subset for t in dense_pass.index.get_level_values("task_id")]
                    row["paired"], row["delta"], row["delta_lo"], row["delta_hi"], row["mcnemar_p"] = paired_test(
                        passes[keep], dense_pass[dkeep])
                rows.append(row)
                if v.variant != DENSE:
                    family.append(row)
            raw = [math.nan if r["mcnemar_p"] is None else r["mcnemar_p"] for r in family]
            for r, adj in zip(family, holm(raw)):
                r["holm_p"] = None if math.isnan(adj) else adj
    log.info("subset scores: %d rows", len(rows))
    write_table(out_path, rows, SUBSET_SCORES_SCHEMA)
