"""Stage 6, score: one row per (benchmark, variant) from the execute rows and the
infer stage's generations and summary.

A sample passes "base" when its base split passed, "plus" when base and plus both passed
(EvalPlus's rule). pass@1 is the mean over tasks of the share of passing samples (with one
greedy sample per task: the share of tasks passed); its 95% Wilson interval treats the
N tasks as Bernoulli trials. The difference to the dense baseline is tested with an exact
McNemar test over (task, sample) pairs present in both: only discordant pairs count; its
95% interval is Newcombe's paired hybrid score interval (stats.newcombe_paired). Every
variant of a benchmark is compared with the same dense run, so the p-values of one
(benchmark, split) form a family: `holm_p_*` is the Holm-adjusted p beside the raw one.
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
from skipbench.score.stats import Z95, holm, mcnemar_exact, newcombe_paired, wilson  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

DENSE = "dense"
SPLITS = ("base", "plus")

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
    ("delta_base_lo", pa.float64()),  # its 95% interval (Newcombe 1998 paired hybrid score)
    ("delta_base_hi", pa.float64()),
    ("mcnemar_p_base", pa.float64()),  # exact two-sided McNemar p-value of that difference
    ("holm_p_base", pa.float64()),  # Holm-adjusted over the variants of this benchmark (one family)
    ("delta_plus", pa.float64()),
    ("delta_plus_lo", pa.float64()),
    ("delta_plus_hi", pa.float64()),
    ("mcnemar_p_plus", pa.float64()),
    ("holm_p_plus", pa.float64()),
    ("tokens_per_s", pa.float64()),  # from the infer summary; null for external samples
    ("batch_size", pa.int32()),  # prompts generated together when tokens_per_s was measured
    ("engine", pa.string()),  # infer summary: engine name and version, device, dtype, skip path
    ("engine_version", pa.string()),
    ("device", pa.string()),
    ("dtype", pa.string()),
    ("skip_path", pa.string()),  # none | weight0 (skipped expert still computed) | sentinel | skip_kernel (not computed)
    ("expert_kernel", pa.string()),  # what computed the routed experts: vllm | skipbench-triton | transformers-eager
    ("prompt_protocol", pa.string()),  # generation.prompt of the infer stage: completion | chat; null for external samples
    ("routed_per_decode_token", pa.float64()),  # infer summary: kept routed experts per decode token and MoE layer (batch_aware: at the deployment batch)
    ("routed_per_prompt_token", pa.float64()),  # the same over prompt (prefill) tokens
    ("top_p_cap_binds", pa.float64()),  # top_p: share of token-layers whose rule over all E wanted more than K; else null
    ("top_p_uncapped_experts", pa.float64()),  # top_p: mean experts that rule wanted (before the cap at K); else null
    ("dense_experts_per_token", pa.float64()),  # the model's top-k
    ("identical_to_dense", pa.float64()),  # share of completions token-identical to dense's
    ("kl_to_dense", pa.float64()),  # teacher-forced on dense's completions: mean KL(dense || variant), nats
    ("top1_agree", pa.float64()),  # teacher-forced: share of decode positions with dense's argmax
    ("kl_noise_floor", pa.float64()),  # the same KL between dense in fp32 and in the serving dtype (bf16): harmless drift
    ("first_diff_token", pa.float64()),  # mean over ALL pairs of tokens agreed before the first difference (identical: its length)
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
    fidelity: str | None = None  # fidelity stage Parquet of the benchmark (FIDELITY_SCHEMA)


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


def paired_test(mine: pd.Series, dense: pd.Series) -> tuple[int, float, float, float, float]:
    """(pairs, difference of pass rates, its 95% interval lo, hi, exact McNemar p) over
    shared (task, sample) pairs."""
    both = pd.concat([mine.rename("m"), dense.rename("d")], axis=1, join="inner").dropna().astype(bool)
    if both.empty:
        return (0, math.nan, math.nan, math.nan, math.nan)
    a = int((both.m & both.d).sum())
    b = int((both.m & ~both.d).sum())
    c = int((~both.m & both.d).sum())
    lo, hi = newcombe_paired(a, b, c, len(both) - a - b - c)
    return (len(both), (b - c) / len(both), lo, hi, mcnemar_exact(b, c))


def fidelity(gen: pd.DataFrame, dense: pd.DataFrame) -> tuple[float, float]:
    """(share of completions identical to dense, mean over all pairs of the first differing
    token's index; an identical pair counts its full length, so the mean is the number of
    tokens generated before the variant left dense's path, not only over pairs that left)."""
    key = ["task_id", "sample_id"]
    col = "token_ids" if "token_ids" in gen and "token_ids" in dense else "completion"
    joined = gen[key + [col]].merge(dense[key + [col]], on=key, suffixes=("", "_dense"))
    if joined.empty:
        return (math.nan, math.nan)
    diffs = [first_difference(list(a), list(b)) for a, b in zip(joined[col], joined[col + "_dense"])]
    agreed = [len(a) if d is None else d for d, a in zip(diffs, joined[col])]
    return (sum(d is None for d in diffs) / len(diffs), sum(agreed) / len(agreed))


def teacher_forced(fid: pd.DataFrame | None, variant: str) -> dict:
    """kl_to_dense, top1_agree (0 and 1 for dense itself) and the benchmark's noise floor."""
    out = dict(kl_to_dense=None, top1_agree=None, kl_noise_floor=None)
    if fid is None or fid.empty:
        return out
    floor = fid[fid["variant"] == DENSE]
    if len(floor):
        out["kl_noise_floor"] = float(floor["kl_mean"].iloc[0])
    if variant == DENSE:
        return out | dict(kl_to_dense=0.0, top1_agree=1.0)
    mine = fid[fid["variant"] == variant]
    if len(mine) and pd.notna(mine["kl_mean"].iloc[0]):
        out |= dict(kl_to_dense=float(mine["kl_mean"].iloc[0]), top1_agree=float(mine["top1_agree"].iloc[0]))
    return out


def _paired_columns(split: str) -> tuple[str, ...]:
    """Score columns of paired_test's (difference, lo, hi, p) for one split."""
    return (f"delta_{split}", f"delta_{split}_lo", f"delta_{split}_hi", f"mcnemar_p_{split}")


def holm_by_family(rows: list[dict]) -> None:
    """Fill holm_p_<split>: Holm over the variants of one benchmark (dense itself excluded)."""
    for split in SPLITS:
        for bench in dict.fromkeys(r["benchmark"] for r in rows):
            family = [r for r in rows if r["benchmark"] == bench and r["variant"] != DENSE]
            raw = [math.nan if r[f"mcnemar_p_{split}"] is None else r[f"mcnemar_p_{split}"] for r in family]
            for r, adj in zip(family, holm(raw)):
                r[f"holm_p_{split}"] = None if math.isnan(adj) else adj


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
        paired=None, holm_p_base=None, holm_p_plus=None, **{c: None for sp in SPLITS for c in _paired_columns(sp)},
        identical_to_dense=None, first_diff_token=None, **teacher_forced(_read(v.fidelity), v.variant),
        time_factor=float(ex["time_factor"].iloc[0]), min_time_limit_s=float(ex["min_time_limit_s"].iloc[0]),
        sandbox=",".join(sorted(set(ex["sandbox"]))),
        status_counts=json.dumps({k: int(c) for k, c in ex["status"].value_counts().sort_index().items()}),
    )  # fmt: skip
    summary = _read(v.summary)
    for col in ("tokens_per_s", "routed_per_decode_token", "routed_per_prompt_token", "top_p_cap_binds",
                "top_p_uncapped_experts", "dense_experts_per_token"):
        row[col] = _summary_value(summary, col)
    row["batch_size"] = _summary_value(summary, "batch_size", int)
    for col in ("strategy", "params", "engine", "engine_version", "device", "dtype", "skip_path", "expert_kernel",
                "prompt_protocol"):
        row[col] = _summary_value(summary, col, str)
    if dense is not None:
        dpass = sample_passes(_read(dense.execution))
        for split in SPLITS[: 1 + has_plus]:
            n, *stats = paired_test(passes[split], dpass[split])
            row["paired"] = n if split == "base" else row["paired"]
            row.update(zip(_paired_columns(split), stats))
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
    holm_by_family(rows)
    write_table(out_path, rows, SCORES_SCHEMA)
