"""Report inputs and the summary table: one row per (run, benchmark, variant).

A run is one results/<run>/ directory (one model or preset). Its scores are required; its
throughput sweep, roofline predictions and traffic tables are optional (no GPU, no traces):
where one is absent the columns it feeds are null and the figures say "no data".

Definitions used by the summary and the figures:
- quality: pass@1 on the plus tests where the benchmark has them, else on the base tests;
- measured speedup: output tokens/s of the throughput sweep over dense's at the same
  concurrency, engine and device (weight0 skip path: the expert is still computed);
- predicted speedup: roofline whole-model tokens/s of the variant over dense's at the same
  batch and equal load (traffic replay refills every step to `batch` decode tokens), for the
  `skip_kernel` path (a skipped expert is never loaded). A band: `calibrated` (today's
  kernels, skipbench.speed.costmodel fitted on measurements of the device) and `bytes_floor`
  (every term at the profile's peaks: a lower bound on time; its speedup is not a bound on
  the speedup). A profile without a calibration for the model has only the bytes floor,
  never called a speedup (predicted_speedup stays null).
- validation error: the engine's measured time per output token against the prediction of
  the profile describing the same device (roofline/validation.parquet), median over rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from skipbench.io import read_table

log = logging.getLogger(__name__)

DENSE = "dense"
ALL_LAYERS = -1  # traffic/roofline rows averaged over (or summed over) every MoE layer

SUMMARY_SCHEMA = pa.schema([
    ("run", pa.string()),  # results/<run>: one model or preset
    ("benchmark", pa.string()),  # config key of the benchmark
    ("dataset", pa.string()),
    ("dataset_version", pa.string()),
    ("variant", pa.string()),  # config key of the skip variant
    ("strategy", pa.string()),  # SkipRule.strategy; null for external samples
    ("params", pa.string()),  # SkipRule parameters as JSON
    ("tasks", pa.int32()),
    ("pass1_base", pa.float64()),  # pass@1, base tests, with its 95% Wilson interval
    ("pass1_base_lo", pa.float64()),
    ("pass1_base_hi", pa.float64()),
    ("pass1_plus", pa.float64()),  # pass@1, base + plus tests; null without plus tests
    ("pass1_plus_lo", pa.float64()),
    ("pass1_plus_hi", pa.float64()),
    ("paired", pa.int32()),  # (task, sample) pairs shared with dense
    ("delta_base", pa.float64()),  # pass rate minus dense's over those pairs
    ("delta_base_lo", pa.float64()),  # its 95% interval (Newcombe's paired hybrid score)
    ("delta_base_hi", pa.float64()),
    ("mcnemar_p_base", pa.float64()),  # exact two-sided McNemar p of that difference
    ("holm_p_base", pa.float64()),  # Holm-adjusted over the run's variants of this benchmark
    ("delta_plus", pa.float64()),
    ("delta_plus_lo", pa.float64()),
    ("delta_plus_hi", pa.float64()),
    ("mcnemar_p_plus", pa.float64()),
    ("holm_p_plus", pa.float64()),
    ("tokens_per_s", pa.float64()),  # measured by the infer stage at infer_batch
    ("infer_batch", pa.int32()),
    ("engine", pa.string()),  # engine name and version of the infer stage
    ("device", pa.string()),  # device of the infer stage (cpu:... numbers are CPU numbers)
    ("skip_path", pa.string()),  # none | weight0 (skipped expert still computed) | sentinel | skip_kernel (not computed)
    ("expert_kernel", pa.string()),  # what computed the routed experts: vllm | skipbench-triton | transformers-eager
    ("prompt_protocol", pa.string()),  # generation.prompt: completion | chat (skipbench.benchmarks.prompts); null for external samples
    ("sandbox", pa.string()),  # execution.sandbox the scores ran under: bwrap | none (WITHOUT isolation)
    ("deployment_batch", pa.int32()),  # report.deployment_batch: batch of the next five columns
    ("measured_tok_s", pa.float64()),  # throughput sweep output tokens/s; null when not swept
    ("measured_speedup", pa.float64()),  # over dense, same concurrency, engine and device
    ("measured_on", pa.string()),  # "<engine> <version> on <device>" of those two
    ("replayed_speedup", pa.float64()),  # routed experts' time, dense's over the variant's, measured replay (skipbench.speed.replay)
    ("replayed_on", pa.string()),  # "routed experts, replayed on <device> <path>, experts <HxI dtype>"
    ("predicted_hardware", pa.string()),  # roofline hardware profile of the next five
    ("predicted_tok_s", pa.float64()),  # predicted, skip_kernel path, calibrated (else bytes floor)
    ("predicted_speedup", pa.float64()),  # tokens/s over dense, skip_kernel path, calibrated; null if uncalibrated
    ("predicted_speedup_floor", pa.float64()),  # the same at the bytes floor (a lower bound on time, not a bound on speedup)
    ("predicted_calibration", pa.string()),  # what the calibrated end was fitted on, or "uncalibrated"
    ("validation_hardware", pa.string()),  # profile whose predictions were checked against the engine here
    ("validation_error", pa.float64()),  # median predicted / measured - 1 of those checks (engine decode step)
    ("routed_per_decode_token", pa.float64()),  # kept routed experts per decode token and MoE layer, at infer_batch
    ("dense_experts_per_token", pa.float64()),  # the model's top-k
    ("distinct_experts", pa.float64()),  # experts loaded per step per MoE layer at deployment_batch
    ("identical_to_dense", pa.float64()),  # share of completions token-identical to dense's
    ("first_diff_token", pa.float64()),  # mean over all pairs of tokens agreed before the first difference
    ("kl_to_dense", pa.float64()),  # teacher-forced on dense's completions: mean KL(dense || variant), nats
    ("top1_agree", pa.float64()),  # teacher-forced: share of decode positions with dense's argmax
    ("kl_noise_floor", pa.float64()),  # the same KL between dense in fp32 and in bf16: drift that is harmless
    ("pareto", pa.bool_()),  # on the quality vs experts-per-token Pareto front of its run and benchmark
    ("pareto_within_ci", pa.bool_()),  # off the front, but its pass@1 interval overlaps every dominating point's
])  # fmt: skip


@dataclass
class RunTables:
    """The tables of one run that the report reads; optional ones may be None / empty."""

    run: str
    scores: pd.DataFrame  # SCORES_SCHEMA
    throughput: pd.DataFrame | None = None  # THROUGHPUT_SCHEMA, all swept variants
    predictions: pd.DataFrame | None = None  # PREDICTION_SCHEMA
    validation: pd.DataFrame | None = None  # roofline VALIDATION_SCHEMA (next to the predictions)
    traffic: dict[str, pd.DataFrame] = field(default_factory=dict)  # benchmark -> TRAFFIC_SCHEMA
    subsets: pd.DataFrame | None = None  # score_subsets.SUBSET_SCORES_SCHEMA (next to the scores)
    replay: dict[str, pd.DataFrame] = field(default_factory=dict)  # benchmark -> replay.REPLAY_SCHEMA


def _read(path) -> pd.DataFrame | None:
    if path is None or not Path(path).exists():
        return None
    return read_table(path).to_pandas()


def load_run(run: str, scores, throughput=(), predictions=None, traffic: dict | None = None,
             replay: dict | None = None) -> RunTables:  # fmt: skip
    """Read one run's tables from paths; absent optional paths give None (logged)."""
    frames = [df for df in map(_read, throughput) if df is not None]
    out = RunTables(
        run=run,
        scores=read_table(scores).to_pandas(),
        throughput=pd.concat(frames, ignore_index=True) if frames else None,
        predictions=_read(predictions),
        # written by the same rule as the predictions, next to them
        validation=_read(Path(predictions).with_name("validation.parquet")) if predictions else None,
        traffic={b: df for b, p in (traffic or {}).items() if (df := _read(p)) is not None},
        subsets=_read(Path(scores).with_name("subsets.parquet")),  # written by the same rule as the scores
        replay={b: df for b, p in (replay or {}).items() if (df := _read(p)) is not None},
    )
    for what, missing in (("throughput sweep", out.throughput is None), ("roofline predictions", out.predictions is None),
                          ("traffic tables", not out.traffic)):  # fmt: skip
        if missing:
            log.info("%s: no %s", run, what)
    return out


def pareto_front(xs, ys, x_higher_better: bool = True) -> list[int]:
    """Indices of points not dominated by another (y always higher-better), sorted by x.

    A point is dominated when another is at least as good on both axes and better on one.
    """
    sign = 1 if x_higher_better else -1
    pts = [(sign * x, y, i) for i, (x, y) in enumerate(zip(xs, ys))]
    front = [i for x, y, i in pts if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2, _ in pts)]
    return sorted(front, key=lambda i: xs[i])


def within_ci_of_front(xs, ys, los, his, x_higher_better: bool = True) -> list[int]:
    """Indices of dominated points whose interval [lo, hi] overlaps the interval of every
    point that dominates them: off the front, but not distinguishable from it."""
    sign = 1 if x_higher_better else -1
    out = []
    for i in range(len(xs)):
        dom = [j for j in range(len(xs)) if sign * xs[j] >= sign * xs[i] and ys[j] >= ys[i]
               and (sign * xs[j] > sign * xs[i] or ys[j] > ys[i])]
        if dom and all(los[j] <= his[i] and los[i] <= his[j] for j in dom):
            out.append(i)
    return out


def quality_split(scores: pd.DataFrame) -> str:
    """'plus' where the benchmark has plus tests, else 'base'."""
    return "plus" if scores["pass1_plus"].notna().any() else "base"


def measured_speedup(throughput: pd.DataFrame | None) -> pd.DataFrame:
    """Throughput rows with `speedup` over dense at the same engine, device and concurrency."""
    cols = ["variant", "concurrency", "engine", "engine_version", "device", "skip_path", "output_tok_s", "speedup"]
    if throughput is None or throughput.empty:
        return pd.DataFrame(columns=cols)
    keys = ["engine", "engine_version", "device", "concurrency"]
    dense = throughput[throughput["variant"] == DENSE][keys + ["output_tok_s"]]
    out = throughput.merge(dense.rename(columns={"output_tok_s": "dense_tok_s"}), on=keys, how="left")
    out["speedup"] = out["output_tok_s"] / out["dense_tok_s"]
    return out[cols].sort_values(["variant", "concurrency"]).reset_index(drop=True)


PREDICTED_COLUMNS = ["hardware", "variant", "batch", "calibration", "calibration_source", "tokens_per_s", "speedup",
                     "speedup_floor"]  # fmt: skip


REPLAY_PATHS = ("triton_v2", "grouped_mm", "cpu_eager")  # which measured path the summary shows first


def replayed_speedup(replay: dict[str, pd.DataFrame], benchmark: str | None = None) -> pd.DataFrame:
    """Measured replay rows of one benchmark (None: the first with a replay), one path (the
    first of REPLAY_PATHS measured): variant, batch, speedup, on (where and at what width)."""
    frames = [df.assign(benchmark=b) for b, df in replay.items() if benchmark in (None, b)]
    cols = ["variant", "batch", "speedup", "on"]
    if not frames:
        return pd.DataFrame(columns=cols)
    r = pd.concat(frames, ignore_index=True)
    r = r[(r["status"] == "measured") & (r["benchmark"] == r["benchmark"].iloc[0])]
    if r.empty:
        return pd.DataFrame(columns=cols)
    path = next(p for p in (*REPLAY_PATHS, *r["path"]) if p in set(r["path"]))
    r = r[r["path"] == path].rename(columns={"concurrency": "batch"})
    r["on"] = "routed experts, replayed on " + r["device"] + " " + r["path"] + ", experts " + r["expert_shape"]
    return r[cols].reset_index(drop=True)


def predicted_whole_model(predictions: pd.DataFrame | None) -> pd.DataFrame:
    """Whole-model skip_kernel predictions, one row per (hardware, variant, batch): tokens_per_s
    and speedup of the calibrated model where the profile has one (calibration "calibrated"),
    else of the bytes floor; speedup_floor always the bytes-floor end."""
    if predictions is None or predictions.empty:
        return pd.DataFrame(columns=PREDICTED_COLUMNS)
    p = predictions[(predictions["layer"] == ALL_LAYERS) & (predictions["skip_path"] == "skip_kernel")]
    keys = ["hardware", "variant", "batch"]
    floor = p[p["calibration"] == "bytes_floor"].set_index(keys)["speedup"].rename("speedup_floor")
    best = p.sort_values("calibration", key=lambda c: c != "calibrated").drop_duplicates(keys)  # calibrated first
    out = best.join(floor, on=keys)
    return out[PREDICTED_COLUMNS].sort_values(keys).reset_index(drop=True)


def validation_error(validation: pd.DataFrame | None) -> tuple[str | None, float]:
    """(profile, median predicted/measured - 1) of the engine checks; calibrated ones first."""
    if validation is None or validation.empty:
        return None, math.nan
    v = validation[validation["kind"] == "engine"]
    if v.empty:
        return None, math.nan
    v = v[v["calibration"] == ("calibrated" if (v["calibration"] == "calibrated").any() else "bytes_floor")]
    hw = v["hardware"].iloc[0]
    return hw, float(v.loc[v["hardware"] == hw, "rel_error"].median())


def distinct_at(traffic: pd.DataFrame | None, batch: int) -> dict[str, float]:
    """variant -> distinct experts per step per MoE layer at concurrency `batch` (model average);
    none where the traces hold fewer sequences than `batch` (replayed at a smaller batch)."""
    if traffic is None:
        return {}
    t = traffic[(traffic["layer"] == ALL_LAYERS) & (traffic["concurrency"] == batch) & (traffic["c_effective"] == batch)]
    return dict(zip(t["variant"], t["distinct_mean"]))


def pick_hardware(predictions: pd.DataFrame, preferred: list[str]) -> str | None:
    """The first profile of `preferred` that has predictions, else the first predicted one."""
    have = list(dict.fromkeys(predictions["hardware"])) if len(predictions) else []
    return next((h for h in preferred if h in have), have[0] if have else None)


def summary_rows(tables: RunTables, deployment_batch: int, hardware: list[str]) -> pd.DataFrame:
    """SUMMARY_SCHEMA rows of one run."""
    s = tables.scores.copy()
    for col in SUMMARY_SCHEMA.names:  # scores of older runs may lack the provenance columns
        if col not in s:
            s[col] = None
    s["run"], s["infer_batch"], s["deployment_batch"] = tables.run, s["batch_size"], deployment_batch
    s["engine"] = (s["engine"].fillna("") + " " + s["engine_version"].fillna("")).str.strip().replace("", None)

    meas = measured_speedup(tables.throughput)
    meas = meas[meas["concurrency"] == deployment_batch].drop_duplicates("variant").set_index("variant")
    s["measured_tok_s"] = s["variant"].map(meas["output_tok_s"])
    s["measured_speedup"] = s["variant"].map(meas["speedup"])
    on = meas["engine"] + " " + meas["engine_version"] + " on " + meas["device"]
    s["measured_on"] = s["variant"].map(on)

    for b, g in s.groupby("benchmark"):
        rep = replayed_speedup(tables.replay, b)
        rep = rep[rep["batch"] == deployment_batch].set_index("variant")
        s.loc[g.index, "replayed_speedup"] = g["variant"].map(rep["speedup"])
        s.loc[g.index, "replayed_on"] = g["variant"].map(rep["on"])

    pred = predicted_whole_model(tables.predictions)
    hw = pick_hardware(pred, hardware)
    pred = pred[(pred["hardware"] == hw) & (pred["batch"] == deployment_batch)].set_index("variant")
    s["predicted_hardware"] = hw if len(pred) else None
    s["predicted_tok_s"] = s["variant"].map(pred["tokens_per_s"])
    calibrated = pred[pred["calibration"] == "calibrated"]
    s["predicted_speedup"] = s["variant"].map(calibrated["speedup"])  # an uncalibrated one is no speedup
    s["predicted_speedup_floor"] = s["variant"].map(pred["speedup_floor"])
    source = pred["calibration_source"].where(pred["calibration"] == "calibrated", "uncalibrated")
    s["predicted_calibration"] = s["variant"].map(source)
    s["validation_hardware"], s["validation_error"] = validation_error(tables.validation)

    s["distinct_experts"] = [distinct_at(tables.traffic.get(b), deployment_batch).get(v, math.nan)
                             for b, v in zip(s["benchmark"], s["variant"])]  # fmt: skip
    s["pareto"] = False
    s["pareto_within_ci"] = False
    for _, g in s.groupby("benchmark"):
        q = f"pass1_{quality_split(g)}"
        g = g.dropna(subset=["routed_per_decode_token", q])
        front = pareto_front(g["routed_per_decode_token"].tolist(), g[q].tolist(), x_higher_better=False)
        s.loc[g.index[front], "pareto"] = True
        near = within_ci_of_front(g["routed_per_decode_token"].tolist(), g[q].tolist(), g[f"{q}_lo"].tolist(),
                                  g[f"{q}_hi"].tolist(), x_higher_better=False)
        s.loc[g.index[near], "pareto_within_ci"] = True
    return s[SUMMARY_SCHEMA.names]


def build_summary(runs: list[RunTables], deployment_batch: int, hardware: list[str]) -> pd.DataFrame:
    rows = pd.concat([summary_rows(t, deployment_batch, hardware) for t in runs], ignore_index=True)
    order = {r.run: i for i, r in enumerate(runs)}
    rows = rows.sort_values(["run", "benchmark", "variant"], key=lambda c: c.map(order) if c.name == "run" else c)
    return rows.reset_index(drop=True)
