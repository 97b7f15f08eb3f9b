"""The summary as people read it: Markdown (summary.md, the report's HTML view, `skipbench
show`) with the provenance of every column, and the per-difficulty section."""

from __future__ import annotations

import math
import textwrap
from typing import Callable

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
    """'calibrated / bytes floor', or 'bytes floor x (uncalibrated)' without calibration."""
    floor = _num(r["predicted_speedup_floor"], ".2f")
    if not floor:
        return ""
    cal = _num(r["predicted_speedup"], ".2f")
    return f"{cal} / {floor}" if cal else f"bytes floor {floor} (uncalibrated)"


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


def _replay_note(summary: pd.DataFrame, batch: int) -> str:
    """Where the replayed speedups were measured, and which part of a step they cover."""
    on = "; ".join(sorted(set(summary["replayed_on"].dropna()))) if "replayed_on" in summary else ""
    if not on:
        return f"Replayed @{batch}: no measured replay (needs routing traces and a dense variant)."
    return (f"Replayed @{batch}: measured, {on}; each variant's own routing at {batch} decode tokens a step, "
            "dense's time over the variant's. It covers the routed experts of the MoE layers only: the rest of "
            "a step (attention, shared experts, dense layers, lm_head) is modelled by the roofline, not measured.")


def _batch_note(summary: pd.DataFrame) -> str:
    """At which batch the quality columns were generated: batch_aware (OEA) at its own."""
    at = {oea: "/".join(map(str, sorted(set(b.dropna().astype(int))))) or "n/a"
          for oea, b in summary["infer_batch"].groupby(summary["strategy"] == "batch_aware")}
    oea = (f"; batch_aware (OEA) variants at batch {at[True]} (report.deployment_batch): a token's experts "
           "depend on the other tokens of its step, so their quality is that batch's") if True in at else ""
    return f"Quality generated at batch {at.get(False, 'n/a')} (generation.batch_size){oea}."


CONTEXT = ("run", "benchmark")  # columns that become the caption when one value fills them


def columns(summary: pd.DataFrame) -> dict[str, dict[str, Callable]]:
    """The summary's two tables, {title: {header: cell of a row}}: quality (what skipping
    costs) and speed (what it buys). Both start with the CONTEXT columns and the variant."""
    batch = int(summary["deployment_batch"].iloc[0]) if len(summary) else 0
    key = {
        "run": lambda r: r["run"],
        "benchmark": lambda r: r["benchmark"],
        "variant": lambda r: r["variant"] + (" *" if r["pareto"] else " ~" if r.get("pareto_within_ci") else ""),
    }
    quality = {
        "pass@1 base [95% CI]": lambda r: _interval(r, "base"),
        "pass@1 plus [95% CI]": lambda r: _interval(r, "plus"),
        "Δ base vs dense [95% CI] (McNemar p, Holm p)": lambda r: _delta(r, "base"),
        "Δ plus vs dense [95% CI] (McNemar p, Holm p)": lambda r: _delta(r, "plus"),
        "routed experts/decode token (infer batch)": lambda r: _num(r["routed_per_decode_token"], ".2f"),
        "identical to dense": lambda r: _num(r["identical_to_dense"], ".2f"),
        "KL to dense, nats (noise floor)": lambda r: _kl(r),
        "top-1 agreement": lambda r: _num(r.get("top1_agree"), ".3f"),
    }
    speed = {
        "tok/s (infer batch, skip path; not a speedup)": lambda r: _num(r["tokens_per_s"], ".1f"),
        f"tok/s @{batch} (measured)": lambda r: _num(r["measured_tok_s"], ".1f"),
        f"speedup @{batch} (measured)": lambda r: _num(r["measured_speedup"], ".2f"),
        f"routed-expert speedup @{batch} (replayed)": lambda r: _num(r.get("replayed_speedup"), ".2f"),
        f"predicted tok/s ratio @{batch} (calibrated / bytes floor)": _band,
        "routed experts/decode token (infer batch)": lambda r: _num(r["routed_per_decode_token"], ".2f"),
        f"distinct experts/step @{batch}": lambda r: _num(r["distinct_experts"], ".1f"),
    }
    return {"Quality": key | quality, "Speed": key | speed}


def cells(summary: pd.DataFrame, table: dict[str, Callable]) -> tuple[dict[str, list[str]], str]:
    """{header: cells} of the columns worth a reader's width, and a caption naming what was
    left out: a CONTEXT column with one value (said once), a column with no value at all."""
    out = {h: [str(f(r)).replace("\n", " ") for _, r in summary.iterrows()] for h, f in table.items()}
    constant = [h for h in CONTEXT if h in out and len(set(out[h])) == 1]
    empty = [h for h, v in out.items() if h not in constant and not any(v)]
    caption = "; ".join(f"{h}: {out[h][0]}" for h in constant)
    if empty:
        caption += ("; " if caption else "") + "no values (left out): " + ", ".join(empty)
    return {h: v for h, v in out.items() if h not in constant + empty}, caption


def _markdown_table(table: dict[str, list[str]]) -> list[str]:
    rows = zip(*table.values()) if table else []
    return (["| " + " | ".join(table) + " |", "|" + "---|" * len(table)]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows])  # fmt: skip


def text_tables(summary: pd.DataFrame, width: int = 100) -> str:
    """The tables as plain text no wider than `width` (`skipbench show`): headers wrapped,
    columns that do not fit continued in another block that repeats the variant column."""
    out = []
    for title, table in columns(summary).items():
        kept, caption = cells(summary, table)
        widths = {h: max([len(c) for c in v] + [min(len(h), 12)]) for h, v in kept.items()}
        first = [h for h in kept if h == "variant" or h in CONTEXT][:1] or list(kept)[:1]
        blocks, block = [], list(first)
        for h in kept:
            if h in first:
                continue
            if sum(widths[c] + 2 for c in block + [h]) > width and len(block) > len(first):
                blocks.append(block)
                block = list(first)
            block.append(h)
        blocks.append(block)
        out += textwrap.wrap(title + (f" ({caption})" if caption else ""), width)
        for block in blocks:
            heads = {h: textwrap.wrap(h, widths[h]) or [""] for h in block}
            depth = max(len(v) for v in heads.values())
            for i in range(depth):
                out.append("  ".join((heads[h][i] if i < len(heads[h]) else "").ljust(widths[h]) for h in block).rstrip())
            out.append("  ".join("-" * widths[h] for h in block))
            for n in range(len(summary)):
                out.append("  ".join(kept[h][n].ljust(widths[h]) for h in block).rstrip())
            out.append("")
    return "\n".join(out)


def sandbox_note(summary: pd.DataFrame) -> list[str]:
    """A warning first thing when any score ran without the sandbox (execution.sandbox: none)."""
    if "sandbox" not in summary or not summary["sandbox"].fillna("").str.contains("none").any():
        return []
    return ["**WARNING: execution.sandbox was `none`**: generated code ran WITHOUT isolation (no bubblewrap, no "
            "seccomp) for " + ", ".join(sorted(summary.loc[summary["sandbox"].fillna("").str.contains("none"),
                                                               "variant"])) + ".", ""]  # fmt: skip


def markdown(summary: pd.DataFrame) -> str:
    """The summary as two Markdown tables (quality, speed), with the provenance of every column."""
    batch = int(summary["deployment_batch"].iloc[0]) if len(summary) else 0
    measured_on = ", ".join(sorted(set(summary["measured_on"].dropna())))
    infer_on = ", ".join(sorted({f"{e} on {d}" for e, d in zip(summary["engine"], summary["device"]) if e and d}))
    hw = ", ".join(sorted(set(summary["predicted_hardware"].dropna())))
    cal = "; ".join(sorted(set(summary["predicted_calibration"].dropna()))) or "uncalibrated"
    protocols = {b: "/".join(sorted(set(g["prompt_protocol"].dropna()))) for b, g in summary.groupby("benchmark", sort=False)
                 if g["prompt_protocol"].notna().any()}  # fmt: skip
    lines = sandbox_note(summary)
    for title, table in columns(summary).items():
        kept, caption = cells(summary, table)
        lines += [f"### {title}", "", *_markdown_table(kept), "", *([caption, ""] if caption else [])]
    notes = [
        "",
        "`*`: on the Pareto front of quality (pass@1 plus, else base) vs routed experts per decode token; `~`: off the "
        "front, but its pass@1 interval overlaps that of every point dominating it (not distinguishable from it).",
        f"tok/s (infer batch, skip path): output tokens/s the infer stage measured at its own batch (below), on "
        f"{infer_on or 'n/a'}, on each variant's skip_path: under weight0 a skipped expert is still computed, so "
        "this column is no speedup. Routed experts/decode token: kept routed experts per generated token fed "
        "back and per MoE layer, at the same batch (prompt tokens apart, `routed_per_prompt_token`).",
        _batch_note(summary),
        "Prompt protocol: " + (", ".join(f"{b}: {p}" for b, p in protocols.items()) or "n/a") + " (completion: the "
        "task text completed as it is; chat: the model's chat template as EvalPlus / LiveCodeBench prompt it).",
        f"Measured @{batch}: throughput sweep on {measured_on}; under the weight0 skip path the skipped "
        "experts are still computed, so no speedup is expected there." if measured_on
        else f"Measured @{batch}: no throughput sweep at this batch size.",
        f"Predicted @{batch}: roofline model ({hw}), skip_kernel path (a skipped expert is never loaded), "
        f"decode tokens/s of the variant over dense's at equal load ({batch} sequences in every step): "
        "a prediction, not a measurement. Calibrated: the routed experts' time fitted on measured kernel "
        f"times ({cal}); bytes floor: every term at the profile's peaks, a lower bound on time (its ratio "
        "is not a bound on the speedup). A profile with no calibration for this model's dtype and expert "
        "shape gives only `bytes floor x (uncalibrated)`."
        if hw else f"Predicted @{batch}: no roofline predictions at this batch size.",
        _replay_note(summary, batch),
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
    return "\n".join(lines + notes[1:]) + "\n"


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
