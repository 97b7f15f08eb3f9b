"""The summary as people read it: Markdown (summary.md, the report's HTML view, `skipbench
show`) with the provenance of every column, and the per-difficulty section."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa

from skipbench.io import write_table, write_text
from skipbench.report.summary import SUMMARY_SCHEMA, RunTables


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
    no_floor = floor is None or (isinstance(floor, float) and math.isnan(floor))
    if kl is None or (isinstance(kl, float) and math.isnan(kl)):
        return "" if no_floor else "n/a"  # measured for dense, not this variant: fidelity table's `method` says why
    return f"{kl:.3g}" + ("" if no_floor else f" ({floor:.1g})")


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
        "positions of KL(dense || variant) in nats; in brackets the noise floor, the same KL between dense "
        "in fp32 and dense in the serving dtype (bf16): below it, a variant drifts less than serving in bf16 "
        "does. batch_aware is measured at its deployment batch (batch 1: one token per forward); n/a: not "
        "measurable teacher-forced at that batch (the fidelity table's `method` says why). Top-1 agreement: "
        "share of positions where the variant's most likely token is dense's.",
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
