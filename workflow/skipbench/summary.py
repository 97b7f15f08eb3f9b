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
  kernels, skipbench.costmodel fitted on measurements of the device) and `ideal` (bytes
  floor). A profile without measurements has only the ideal end: an upper bound, never
  called a speedup (predicted_speedup stays null).
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

from skipbench.io import read_table, write_table, write_text

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
    ("prompt_protocol", pa.string()),  # generation.prompt: completion | chat (skipbench.prompts); null for external samples
    ("deployment_batch", pa.int32()),  # report.deployment_batch: batch of the next five columns
    ("measured_tok_s", pa.float64()),  # throughput sweep output tokens/s; null when not swept
    ("measured_speedup", pa.float64()),  # over dense, same concurrency, engine and device
    ("measured_on", pa.string()),  # "<engine> <version> on <device>" of those two
    ("predicted_hardware", pa.string()),  # roofline hardware profile of the next five
    ("predicted_tok_s", pa.float64()),  # predicted, skip_kernel path, calibrated (else ideal)
    ("predicted_speedup", pa.float64()),  # tokens/s over dense, skip_kernel path, calibrated; null if uncalibrated
    ("predicted_speedup_ideal", pa.float64()),  # the same at the bytes floor: an upper bound
    ("predicted_calibration", pa.string()),  # what the calibrated end was fitted on, or "uncalibrated"
    ("validation_hardware", pa.string()),  # profile whose predictions were checked against the engine here
    ("validation_error", pa.float64()),  # median predicted / measured - 1 of those checks (engine decode step)
    ("experts_per_token", pa.float64()),  # kept routed experts per token and MoE layer
    ("dense_experts_per_token", pa.float64()),  # the model's top-k
    ("distinct_experts", pa.float64()),  # experts loaded per step per MoE layer at deployment_batch
    ("identical_to_dense", pa.float64()),  # share of completions token-identical to dense's
    ("first_diff_token", pa.float64()),  # mean over all pairs of tokens agreed before the first difference
    ("kl_to_dense", pa.float64()),  # teacher-forced on dense's completions: mean KL(dense || variant), nats
    ("top1_agree", pa.float64()),  # teacher-forced: share of decode positions with dense's argmax
    ("kl_noise_floor", pa.float64()),  # the same KL between two dense runs: what "identical" means
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


def _read(path) -> pd.DataFrame | None:
    if path is None or not Path(path).exists():
        return None
    return read_table(path).to_pandas()


def load_run(run: str, scores, throughput=(), predictions=None, traffic: dict | None = None) -> RunTables:
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
                     "speedup_ideal"]  # fmt: skip


def predicted_whole_model(predictions: pd.DataFrame | None) -> pd.DataFrame:
    """Whole-model skip_kernel predictions, one row per (hardware, variant, batch): tokens_per_s
    and speedup of the calibrated model where the profile has one (calibration "calibrated"),
    else of the ideal one ("ideal": an upper bound); speedup_ideal always the ideal end."""
    if predictions is None or predictions.empty:
        return pd.DataFrame(columns=PREDICTED_COLUMNS)
    p = predictions[(predictions["layer"] == ALL_LAYERS) & (predictions["skip_path"] == "skip_kernel")]
    keys = ["hardware", "variant", "batch"]
    ideal = p[p["calibration"] == "ideal"].set_index(keys)["speedup"].rename("speedup_ideal")
    best = p.sort_values("calibration").drop_duplicates(keys)  # "calibrated" sorts before "ideal"
    out = best.join(ideal, on=keys)
    return out[PREDICTED_COLUMNS].sort_values(keys).reset_index(drop=True)


def validation_error(validation: pd.DataFrame | None) -> tuple[str | None, float]:
    """(profile, median predicted/measured - 1) of the engine checks; calibrated ones first."""
    if validation is None or validation.empty:
        return None, math.nan
    v = validation[validation["kind"] == "engine"]
    if v.empty:
        return None, math.nan
    v = v[v["calibration"] == v["calibration"].min()]  # "calibrated" before "ideal"
    hw = v["hardware"].iloc[0]
    return hw, float(v.loc[v["hardware"] == hw, "rel_error"].median())


def distinct_at(traffic: pd.DataFrame | None, batch: int) -> dict[str, float]:
    """variant -> distinct experts per step per MoE layer at concurrency `batch` (model average)."""
    if traffic is None:
        return {}
    t = traffic[(traffic["layer"] == ALL_LAYERS) & (traffic["concurrency"] == batch)]
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

    pred = predicted_whole_model(tables.predictions)
    hw = pick_hardware(pred, hardware)
    pred = pred[(pred["hardware"] == hw) & (pred["batch"] == deployment_batch)].set_index("variant")
    s["predicted_hardware"] = hw if len(pred) else None
    s["predicted_tok_s"] = s["variant"].map(pred["tokens_per_s"])
    calibrated = pred[pred["calibration"] == "calibrated"]
    s["predicted_speedup"] = s["variant"].map(calibrated["speedup"])  # an uncalibrated one is no speedup
    s["predicted_speedup_ideal"] = s["variant"].map(pred["speedup_ideal"])
    source = pred["calibration_source"].where(pred["calibration"] == "calibrated", "uncalibrated")
    s["predicted_calibration"] = s["variant"].map(source)
    s["validation_hardware"], s["validation_error"] = validation_error(tables.validation)

    s["distinct_experts"] = [distinct_at(tables.traffic.get(b), deployment_batch).get(v, math.nan)
                             for b, v in zip(s["benchmark"], s["variant"])]  # fmt: skip
    s["pareto"] = False
    s["pareto_within_ci"] = False
    for _, g in s.groupby("benchmark"):
        q = f"pass1_{quality_split(g)}"
        g = g.dropna(subset=["experts_per_token", q])
        front = pareto_front(g["experts_per_token"].tolist(), g[q].tolist(), x_higher_better=False)
        s.loc[g.index[front], "pareto"] = True
        near = within_ci_of_front(g["experts_per_token"].tolist(), g[q].tolist(), g[f"{q}_lo"].tolist(),
                                  g[f"{q}_hi"].tolist(), x_higher_better=False)
        s.loc[g.index[near], "pareto_within_ci"] = True
    return s[SUMMARY_SCHEMA.names]


def build_summary(runs: list[RunTables], deployment_batch: int, hardware: list[str]) -> pd.DataFrame:
    rows = pd.concat([summary_rows(t, deployment_batch, hardware) for t in runs], ignore_index=True)
    order = {r.run: i for i, r in enumerate(runs)}
    rows = rows.sort_values(["run", "benchmark", "variant"], key=lambda c: c.map(order) if c.name == "run" else c)
    return rows.reset_index(drop=True)


def _num(x, fmt: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _interval(row, split: str) -> str:
    p = row[f"pass1_{split}"]
    if p is None or math.isnan(p):
        return ""
    return f"{p:.3f} [{row[f'pass1_{split}_lo']:.3f}, {row[f'pass1_{split}_hi']:.3f}]"


def _delta(row, split: str) -> str:
    d = row[f"delta_{split}"]
    if d is None or math.isnan(d):
        return ""
    lo, hi, holm_p = row.get(f"delta_{split}_lo"), row.get(f"delta_{split}_hi"), row.get(f"holm_p_{split}")
    ci = "" if lo is None or math.isnan(lo) else f" [{lo:+.2f}, {hi:+.2f}]"
    adj = "" if holm_p is None or math.isnan(holm_p) else f", Holm {holm_p:.3g}"
    return f"{d:+.3f}{ci} (p={row[f'mcnemar_p_{split}']:.3g}{adj})"


def _kl(row) -> str:
    kl, floor = row.get("kl_to_dense"), row.get("kl_noise_floor")
    if kl is None or (isinstance(kl, float) and math.isnan(kl)):
        return ""
    return f"{kl:.3g}" + ("" if floor is None or (isinstance(floor, float) and math.isnan(floor)) else f" ({floor:.1g})")


def _band(r) -> str:
    """'calibrated / ideal', or '≤ ideal (upper bound)' without calibration."""
    ideal = _num(r["predicted_speedup_ideal"], ".2f")
    if not ideal:
        return ""
    cal = _num(r["predicted_speedup"], ".2f")
    return f"{cal} / {ideal}" if cal else f"≤ {ideal} (upper bound)"


def _validation_notes(summary: pd.DataFrame) -> list[str]:
    """One line per run: how far the predictions were from the engine on this machine."""
    notes = []
    for run, g in summary.groupby("run", sort=False):
        hw, err = g["validation_hardware"].dropna(), g["validation_error"].dropna()
        if hw.empty or err.empty:
            notes.append(f"Validation ({run}): no engine measurement to check a prediction against.")
            continue
        e = float(err.iloc[0])
        verdict = (f"OFF BY MORE THAN 25%: predictions for {hw.iloc[0]} do not describe this machine's engine; "
                   "read the predicted column as a model, not an estimate of this run." if abs(e) > 0.25
                   else "within 25%.")  # fmt: skip
        notes.append(f"Validation ({run}): predicted decode step time on {hw.iloc[0]} vs the engine's measured "
                     f"time per output token, median error {100 * e:+.0f}%: {verdict}")  # fmt: skip
    return notes


def _batch_note(summary: pd.DataFrame) -> str:
    """At which batch the quality columns were generated: batch_aware (OEA) at its own."""
    at = {oea: "/".join(map(str, sorted(set(b.dropna().astype(int))))) or "n/a"
          for oea, b in summary["infer_batch"].groupby(summary["strategy"] == "batch_aware")}
    oea = (f"; batch_aware (OEA) variants at batch {at[True]} (report.deployment_batch): a token's experts "
           "depend on the other tokens of its step, so their quality is that batch's") if True in at else ""
    return f"Quality generated at batch {at.get(False, 'n/a')} (generation.batch_size){oea}."


def markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table, with the provenance of every throughput column."""
    batch = int(summary["deployment_batch"].iloc[0]) if len(summary) else 0
    measured_on = ", ".join(sorted(set(summary["measured_on"].dropna())))
    infer_on = ", ".join(sorted({f"{e} on {d}" for e, d in zip(summary["engine"], summary["device"]) if e and d}))
    hw = ", ".join(sorted(set(summary["predicted_hardware"].dropna())))
    cal = "; ".join(sorted(set(summary["predicted_calibration"].dropna()))) or "uncalibrated"
    protocols = {b: "/".join(sorted(set(g["prompt_protocol"].dropna()))) for b, g in summary.groupby("benchmark", sort=False)
                 if g["prompt_protocol"].notna().any()}  # fmt: skip
    columns = {
        "run": lambda r: r["run"],
        "benchmark": lambda r: r["benchmark"],
        "variant": lambda r: r["variant"] + (" *" if r["pareto"] else " ~" if r.get("pareto_within_ci") else ""),
        "pass@1 base [95% CI]": lambda r: _interval(r, "base"),
        "pass@1 plus [95% CI]": lambda r: _interval(r, "plus"),
        "Δ base vs dense [95% CI] (McNemar p, Holm p)": lambda r: _delta(r, "base"),
        "Δ plus vs dense [95% CI] (McNemar p, Holm p)": lambda r: _delta(r, "plus"),
        "tok/s (infer, measured)": lambda r: _num(r["tokens_per_s"], ".1f"),
        f"tok/s @{batch} (measured)": lambda r: _num(r["measured_tok_s"], ".1f"),
        f"speedup @{batch} (measured)": lambda r: _num(r["measured_speedup"], ".2f"),
        f"predicted tok/s ratio @{batch} (calibrated / ideal)": _band,
        "experts/token": lambda r: _num(r["experts_per_token"], ".2f"),
        f"distinct experts/step @{batch}": lambda r: _num(r["distinct_experts"], ".1f"),
        "identical to dense": lambda r: _num(r["identical_to_dense"], ".2f"),
        "KL to dense, nats (noise floor)": lambda r: _kl(r),
        "top-1 agreement": lambda r: _num(r.get("top1_agree"), ".3f"),
    }
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, r in summary.iterrows():
        lines.append("| " + " | ".join(str(f(r)).replace("|", "\\|") for f in columns.values()) + " |")
    notes = [
        "",
        "`*`: on the Pareto front of quality (pass@1 plus, else base) vs experts per token; `~`: off the "
        "front, but its pass@1 interval overlaps that of every point dominating it (not distinguishable from it).",
        f"tok/s (infer, measured): the infer stage's own batch, on {infer_on or 'n/a'}.",
        _batch_note(summary),
        "Prompt protocol: " + (", ".join(f"{b}: {p}" for b, p in protocols.items()) or "n/a") + " (completion: the "
        "task text completed as it is; chat: the model's chat template as EvalPlus / LiveCodeBench prompt it).",
        f"Measured @{batch}: throughput sweep on {measured_on}; under the weight0 skip path the skipped "
        "experts are still computed, so no speedup is expected there." if measured_on
        else f"Measured @{batch}: no throughput sweep at this batch size.",
        f"Predicted @{batch}: roofline model ({hw}), skip_kernel path (a skipped expert is never loaded), "
        f"decode tokens/s of the variant over dense's at equal load ({batch} sequences in every step): "
        "a prediction, not a measurement. Calibrated: the routed experts' time fitted on measured kernel "
        f"times ({cal}); ideal: the bytes floor. An uncalibrated profile gives only `≤ x (upper bound)`."
        if hw else f"Predicted @{batch}: no roofline predictions at this batch size.",
        *_validation_notes(summary),
        "KL to dense: each variant teacher-forced on dense's own greedy completions, mean over decode "
        "positions of KL(dense || variant) in nats; in brackets the noise floor, the same KL between two "
        "dense runs with different batching; top-1 agreement: share of positions where the variant's "
        "most likely token is dense's.",
        "Δ: difference in pass rate to dense over the same (task, sample) pairs, with its 95% interval "
        "(Newcombe 1998 paired hybrid score); p: exact two-sided McNemar test, raw; Holm p: adjusted by "
        "Holm's step-down method over all variants of the run's benchmark (one family per benchmark and "
        "split), the value to read when asking whether ANY variant differs from dense.",
    ]
    return "\n".join(lines + notes) + "\n"


def subsets_markdown(runs: list[RunTables]) -> str:
    """Per-subset scores (LiveCodeBench per difficulty) as a Markdown section; "" if none."""
    frames = [t.subsets.assign(run=t.run) for t in runs if t.subsets is not None and len(t.subsets)]
    if not frames:
        return ""
    lines = ["", "Per difficulty (LiveCodeBench): pass@1 over every test of the subset's problems, Δ to dense "
             "with its 95% Newcombe interval (McNemar p, Holm p within the benchmark and subset).", "",
             "| run | benchmark | subset | variant | tasks | pass@1 [95% CI] | Δ vs dense [95% CI] (McNemar p, Holm p) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for _, r in pd.concat(frames, ignore_index=True).iterrows():
        row = {"pass1_x": r["pass1"], "pass1_x_lo": r["pass1_lo"], "pass1_x_hi": r["pass1_hi"], "delta_x": r["delta"],
               "delta_x_lo": r["delta_lo"], "delta_x_hi": r["delta_hi"], "mcnemar_p_x": r["mcnemar_p"],
               "holm_p_x": r["holm_p"]}  # fmt: skip
        lines.append(f"| {r['run']} | {r['benchmark']} | {r['subset_by']}={r['subset']} | {r['variant']} | "
                     f"{r['tasks']} | {_interval(row, 'x')} | {_delta(row, 'x')} |")
    return "\n".join(lines) + "\n"


def write_summary(summary: pd.DataFrame, parquet_path, markdown_path, extra_markdown: str = "") -> None:
    table = pa.Table.from_pandas(summary, schema=SUMMARY_SCHEMA, preserve_index=False)
    write_table(parquet_path, table, SUMMARY_SCHEMA)
    write_text(markdown_path, markdown(summary) + extra_markdown)
