"""Stage 6, score: one row per (benchmark, variant) from the execute rows and the
infer stage's generations and summary.

A sample passes "base" when its base split passed, "plus" when base and plus both passed
(EvalPlus's rule). pass@1 is the mean over tasks of the share of passing samples (with one
greedy sample per task: the share of tasks passed); its 95% Wilson interval treats the
N tasks as Bernoulli trials. The difference to the dense baseline is tested with an exact
McNemar test over (task, sample) pairs present in both: only discordant pairs count.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skipbench.io import write_table

log = logging.getLogger(__name__)

DENSE = "dense"
Z95 = 1.959963984540054

SCORES_SCHEMA = pa.schema([
    ("benchmark", pa.string()),  # config key of the benchmark
    ("variant", pa.string()),  # config key of the variant ("external": samples from elsewhere)
    ("strategy", pa.string()),  # SkipRule.strategy from the infer summary; null for external samples
    ("params", pa.string()),  # SkipRule parameters as JSON, from the infer summary
    ("dataset", pa.string()),
    ("dataset_version", pa.string()),
    ("dataset_sha256", pa.string()),
    ("tasks", pa.int32()),  # tasks with at least one sample
    ("samples", pa.int32()),
    ("pass1_base", pa.float64()),  # pass@1 on the base tests
    ("pass1_base_lo", pa.float64()),  # 95% Wilson interval
    ("pass1_base_hi", pa.float64()),
    ("pass1_plus", pa.float64()),  # pass@1 on base + plus tests; null without plus tests
    ("pass1_plus_lo", pa.float64()),
    ("pass1_plus_hi", pa.float64()),
    ("paired", pa.int32()),  # (task, sample) pairs shared with dense; null without a dense run
    ("delta_base", pa.float64()),  # pass rate minus dense's over the paired samples
    ("mcnemar_p_base", pa.float64()),  # exact two-sided McNemar p-value of that difference
    ("delta_plus", pa.float64()),
    ("mcnemar_p_plus", pa.float64()),
    ("tokens_per_s", pa.float64()),  # from the infer summary; null for external samples
    ("batch_size", pa.int32()),  # prompts generated together when tokens_per_s was measured
    ("engine", pa.string()),  # infer summary: engine name and version, device, dtype, skip path
    ("engine_version", pa.string()),
    ("device", pa.string()),
    ("dtype", pa.string()),
    ("skip_path", pa.string()),  # none | weight0 (skipped expert still computed) | sentinel | skip_kernel (not computed)
    ("expert_kernel", pa.string()),  # what computed the routed experts: vllm | skipbench-triton | transformers-eager
    ("experts_per_token", pa.float64()),  # kept routed experts per token and MoE layer
    ("dense_experts_per_token", pa.float64()),  # the model's top-k
    ("identical_to_dense", pa.float64()),  # share of completions token-identical to dense's
    ("first_diff_token", pa.float64()),  # mean index of the first differing token, over differing pairs
    ("time_factor", pa.float64()),  # EvalPlus time-limit settings the execute stage used
    ("min_time_limit_s", pa.float64()),
    ("sandbox", pa.string()),  # bwrap | none (none: ran WITHOUT isolation)
    ("status_counts", pa.string()),  # JSON {status: count} over (sample, split) runs
])  # fmt: skip


@dataclass(frozen=True)
class VariantInputs:
    benchmark: str
    variant: str
    execution: str  # execute stage Parquet (EXECUTE_SCHEMA)
    generations: str | None = None  # infer stage generations Parquet; None for external samples
    summary: str | None = None  # infer stage summary Parquet


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact at the ends (the float formula lands a hair inside 0 and 1 there)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c (binomial, p=1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def first_difference(a: list, b: list) -> int | None:
    """Index of the first differing token; None when the sequences are identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def sample_passes(execution: pd.DataFrame) -> pd.DataFrame:
    """(task_id, sample_id) -> base, plus (bool; plus is NaN without plus tests). A split
    passes only when its row says pass AND every test was judged correct (tests_passed ==
    tests_total): a row that claims pass on fewer tests is not one."""
    if {"tests_passed", "tests_total"} <= set(execution):
        judged = execution["tests_passed"] == execution["tests_total"]
        execution = execution.assign(status=execution["status"].where(judged, "incomplete"))
    wide = execution.pivot_table(index=["task_id", "sample_id"], columns="split", values="status", aggfunc="first")
    out = pd.DataFrame(index=wide.index)
    out["base"] = wide["base"] == "pass"
    out["plus"] = (out["base"] & (wide["plus"] == "pass")) if "plus" in wide else math.nan
    return out


def pass_at_1(passes: pd.Series) -> tuple[float, float, float, int]:
    """pass@1 (mean over tasks of the per-task pass share) with its Wilson interval."""
    per_task = passes.astype(float).groupby(level="task_id").mean()
    n = len(per_task)
    lo, hi = wilson(float(per_task.sum()), n)
    return (float(per_task.mean()) if n else math.nan, lo, hi, n)


def paired_test(mine: pd.Series, dense: pd.Series) -> tuple[int, float, float]:
    """(pairs, difference of pass rates, exact McNemar p) over shared (task, sample) pairs."""
    both = pd.concat([mine.rename("m"), dense.rename("d")], axis=1, join="inner").dropna().astype(bool)
    if both.empty:
        return (0, math.nan, math.nan)
    b = int((both.m & ~both.d).sum())
    c = int((~both.m & both.d).sum())
    return (len(both), (b - c) / len(both), mcnemar_exact(b, c))


def fidelity(gen: pd.DataFrame, dense: pd.DataFrame) -> tuple[float, float]:
    """(share of completions identical to dense, mean first differing token position)."""
    key = ["task_id", "sample_id"]
    col = "token_ids" if "token_ids" in gen and "token_ids" in dense else "completion"
    joined = gen[key + [col]].merge(dense[key + [col]], on=key, suffixes=("", "_dense"))
    if joined.empty:
        return (math.nan, math.nan)
    diffs = [first_difference(list(a), list(b)) for a, b in zip(joined[col], joined[col + "_dense"])]
    differing = [d for d in diffs if d is not None]
    return (1 - len(differing) / len(diffs), sum(differing) / len(differing) if differing else math.nan)


def _read(path: str | None) -> pd.DataFrame | None:
    if not path or not Path(path).exists():
        return None
    df = pq.read_table(path).to_pandas()
    return df.rename(columns={"sample": "sample_id"}) if "sample" in df and "sample_id" not in df else df


def _summary_value(summary: pd.DataFrame | None, column: str, kind: type = float):
    if summary is None or column not in summary or summary.empty or pd.isna(summary[column].iloc[0]):
        return None
    return kind(summary[column].iloc[0])


def score_variant(v: VariantInputs, dense: VariantInputs | None) -> dict:
    ex = _read(v.execution)
    passes = sample_passes(ex)
    has_plus = "plus" in set(ex["split"])
    base = pass_at_1(passes["base"])
    plus = pass_at_1(passes["plus"]) if has_plus else (None, None, None, 0)
    row = dict(
        benchmark=v.benchmark, variant=v.variant, dataset=ex["dataset"].iloc[0],
        dataset_version=ex["dataset_version"].iloc[0], dataset_sha256=ex["dataset_sha256"].iloc[0],
        tasks=base[3], samples=len(passes),
        pass1_base=base[0], pass1_base_lo=base[1], pass1_base_hi=base[2],
        pass1_plus=plus[0], pass1_plus_lo=plus[1], pass1_plus_hi=plus[2],
        paired=None, delta_base=None, mcnemar_p_base=None, delta_plus=None, mcnemar_p_plus=None,
        identical_to_dense=None, first_diff_token=None,
        time_factor=float(ex["time_factor"].iloc[0]), min_time_limit_s=float(ex["min_time_limit_s"].iloc[0]),
        sandbox=",".join(sorted(set(ex["sandbox"]))),
        status_counts=json.dumps({k: int(c) for k, c in ex["status"].value_counts().sort_index().items()}),
    )  # fmt: skip
    summary = _read(v.summary)
    for col in ("tokens_per_s", "experts_per_token", "dense_experts_per_token"):
        row[col] = _summary_value(summary, col)
    row["batch_size"] = _summary_value(summary, "batch_size", int)
    for col in ("strategy", "params", "engine", "engine_version", "device", "dtype", "skip_path", "expert_kernel"):
        row[col] = _summary_value(summary, col, str)
    if dense is not None:
        dpass = sample_passes(_read(dense.execution))
        row["paired"], row["delta_base"], row["mcnemar_p_base"] = paired_test(passes["base"], dpass["base"])
        if has_plus:
            _, row["delta_plus"], row["mcnemar_p_plus"] = paired_test(passes["plus"], dpass["plus"])
        gen, dgen = _read(v.generations), _read(dense.generations)
        if gen is not None and dgen is not None:
            row["identical_to_dense"], row["first_diff_token"] = fidelity(gen, dgen)
    return row


def run_score(inputs: list[VariantInputs], out_path: Path) -> None:
    """Score every (benchmark, variant); write SCORES_SCHEMA rows to `out_path`."""
    dense = {v.benchmark: v for v in inputs if v.variant == DENSE}
    rows = []
    for v in inputs:
        if v.benchmark not in dense:
            log.warning("%s: no %r variant, so no paired test or fidelity", v.benchmark, DENSE)
        rows.append(score_variant(v, dense.get(v.benchmark)))
        r = rows[-1]
        log.info("%s/%s: pass@1 base %.3f [%.3f, %.3f], delta vs dense %s (p=%s)", v.benchmark, v.variant,
                 r["pass1_base"], r["pass1_base_lo"], r["pass1_base_hi"], r["delta_base"], r["mcnemar_p_base"])  # fmt: skip
    write_table(out_path, rows, SCORES_SCHEMA)
