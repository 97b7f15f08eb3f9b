"""Stage 7: the report's figures: quality vs cost with Pareto fronts, per benchmark, faceted by run.

Every figure is written as PNG and SVG, deterministic for the same input (fixed SVG hash
salt, no dates), so a rerun that changes nothing upstream changes no bytes. A figure whose
input is absent (no throughput sweep, no roofline, no traces) is still written, saying
"no data" and why, so the report has a fixed list of files.

Per benchmark: tradeoff (pass@1 vs measured tokens/s and experts per token), predicted
(pass@1 vs speedup at the deployment batch: measured panel + one per hardware profile),
fidelity (to dense vs experts per token), layers (heatmaps, figures_traffic), pareto (a
table of the Pareto-optimal variants). Once: speedup (vs batch size, figures_traffic).
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from skipbench.io import atomic_path  # noqa: E402
from skipbench.report.figstyle import FRONT_COLOUR, STYLE, figure_note, label_points, legend_below, panel_grid, panel_text, place_labels, shared_legend, strategy_colours, strategy_markers, variant_colours  # noqa: E402,F401
from skipbench.report.summary import (  # noqa: E402  (pareto_front: re-exported for callers of this module)
    DENSE,
    RunTables,
    measured_speedup,
    pareto_front,
    predicted_whole_model,
    quality_split,
    replayed_speedup,
    validation_error,
)

log = logging.getLogger(__name__)

NOTHING_SKIPPED = {"none", "weight0"}  # skip paths where a skipped expert is still computed (or none is skipped)
MEASURED = "(engine)"  # speedup column of the engine's throughput sweep; other columns are hardware profiles
REPLAYED = "(replayed)"  # speedup column of the measured replay's routed experts (skipbench.speed.replay)
MEASURED_COLUMNS = (MEASURED, REPLAYED)
# What the tradeoff figure puts on x: (column, label, higher is better).
SKIP_PATHS = ("none: nothing skipped; weight0: a skipped expert is still computed at weight 0; "
              "skip_kernel: never loaded")  # fmt: skip
COST_AXES = [
    ("tokens_per_s", "output tokens/s (measured)", True),
    ("routed_per_decode_token", "routed experts computed per decode token per MoE layer", False),
]
FIDELITY_AXES = [
    ("identical_to_dense", "share of completions token-identical to dense"),
    ("first_diff_token", "mean index of the first token that differs from dense"),
]


def save(fig, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg with no date or software stamp (deterministic bytes)."""
    place_labels(fig)  # now that every panel is final
    paths = []
    for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None})):
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata=metadata, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def no_data(ax, why: str) -> None:
    ax.text(0.5, 0.5, f"no data: {why}", ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def grid(rows: int, cols: int, width: float = 5.2, height: float = 4.2):
    """axes[r][c] of a logical rows x cols grid, wrapped to two panels per row (figstyle)."""
    return panel_grid(rows, cols, width, height)


def colour_of(strategies) -> dict[str, tuple]:
    """A fixed colour per strategy name (sorted), dense black, external grey."""
    return strategy_colours(strategies)


def with_strategy(scores: pd.DataFrame) -> pd.DataFrame:
    """Scores with a non-null `strategy` (external samples, scores without the column)."""
    df = scores.copy()
    strategy = df["strategy"] if "strategy" in df else pd.Series(None, index=df.index, dtype=object)
    df["strategy"] = strategy.where(strategy.notna(), df["variant"].where(df["variant"].isin([DENSE, "external"]), "n/a"))
    return df


def strategy_curves(ax, data: pd.DataFrame, x: str, y: str, colours: dict, hollow: bool = False,
                    errors: bool = True) -> list[tuple]:  # fmt: skip
    """One curve per strategy over its settings, ordered by experts per token (the amount
    of skipping the setting realised); dense a star, each setting a shade of its strategy's
    hue. Returns the points to name, (x, y, variant, colour): name them with `label_points`
    once the axes are final."""
    shade = variant_colours(dict(zip(data["variant"], data["strategy"])), colours)
    markers = strategy_markers(colours)
    points = []
    for strategy, g in data.groupby("strategy", sort=True):
        g = g.sort_values(["routed_per_decode_token", "variant"], ascending=[False, True])
        c, m = colours.get(strategy, (0.5, 0.5, 0.5)), markers.get(strategy, "o")
        xs, ys = g[x].to_numpy(float), g[y].to_numpy(float)
        # 2, N; clipped at 0: a Wilson bound can round a hair inside pass@1 = 0 or 1
        yerr = np.stack([ys - g[f"{y}_lo"].to_numpy(float), g[f"{y}_hi"].to_numpy(float) - ys]).clip(min=0) if errors else None
        # points only: a line through one strategy's settings crosses the others' (a web), the
        # Pareto front is the one line a reader follows
        ax.errorbar(xs, ys, yerr=yerr, fmt=m, ls="none", color=c, ecolor=c + (0.35,), ms=12 if strategy == DENSE else 7,
                    mfc="none" if hollow else c, capsize=2, lw=1.0, label=strategy, zorder=3)  # fmt: skip
        for _, row in g.iterrows():
            if strategy != DENSE:  # the setting's own shade over the strategy's marker
                ax.plot(row[x], row[y], m, ms=7, color=shade[row["variant"]], mfc="none" if hollow else shade[row["variant"]],
                        zorder=3)  # fmt: skip
            points.append((row[x], row[y], row["variant"], tuple(v * 0.8 for v in shade[row["variant"]])))
    return points


def calibrated_xlim(speedups: pd.Series) -> tuple[float, float]:
    """x limits of a predicted panel: dense (1.0) and every calibrated point, with room on the
    right for labels. The bytes-floor bars may reach further (they are clipped): scaled to them,
    the calibrated points, often within a few percent of dense, would crowd at one end."""
    lo, hi = min(1.0, speedups.min()), max(1.0, speedups.max())
    span = max(hi - lo, 0.01)
    return lo - 0.12 * span, hi + 0.3 * span


def quality_panel(ax, df: pd.DataFrame, x: str, x_label: str, x_higher: bool, split: str, colours: dict,
                  hollow: bool = False, front: bool = True) -> list[str]:  # fmt: skip
    """pass@1 (95% CI) vs `x`, curves per strategy, the Pareto front dashed.
    Returns the variants on the front, in the order the front line is drawn (by x).
    front=False: `x` does not rank the variants (e.g. throughput where nothing was skipped):
    points grey, no front, returns []."""
    y = f"pass1_{split}"
    data = df.dropna(subset=[x, y]).sort_values("variant").reset_index(drop=True)
    if data.empty:
        no_data(ax, f"no variant has both pass@1 ({split}) and {x_label}")
        return []
    points = strategy_curves(ax, data, x, y, colours, hollow)
    ax.set_xlabel(panel_text(ax, x_label))
    if not front:  # nothing skipped on this path: no front over noise
        ax.set_ylabel(f"pass@1 ({split} tests), 95% interval")
        ax.set_ylim(-0.05, 1.1)
        ax.grid(alpha=0.3)
        legend_below(ax)
        label_points(ax, points)
        return []
    front = pareto_front(data[x].tolist(), data[y].tolist(), x_higher)
    ax.plot(data[x].iloc[front], data[y].iloc[front], "--", color=FRONT_COLOUR, lw=1.5, zorder=0, label="Pareto front")
    ax.set_ylabel(f"pass@1 ({split} tests), 95% interval")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    legend_below(ax)
    label_points(ax, points)
    return data["variant"].iloc[front].tolist()


def _measured_on(scores: pd.DataFrame) -> str:
    """'<engine> <version> on <device>, batch <b>' of the infer stage, from the scores' provenance."""
    cols = ["engine", "engine_version", "device", "batch_size"]
    if not all(c in scores for c in cols):
        return "engine and device not recorded"
    rows = scores.dropna(subset=["engine", "device"])[cols].drop_duplicates()
    return "; ".join(f"{r.engine} {r.engine_version} on {r.device}, batch {r.batch_size}" for r in rows.itertuples()) or "n/a"


def _splits(df: pd.DataFrame) -> list[str]:
    return [s for s in ("base", "plus") if df[f"pass1_{s}"].notna().any()] or ["base"]


def _panel_rows(runs: list[RunTables], benchmark: str):
    """One figure row per (run, test split) with that run's scores of `benchmark`, and a
    colour per strategy shared by every panel."""
    panels = [(t, with_strategy(t.scores[t.scores["benchmark"] == benchmark])) for t in runs]
    rows = [(t, df, split) for t, df in panels for split in _splits(df)]
    return rows, colour_of(s for _, df, _ in rows for s in df["strategy"])


def tradeoff_figure(runs: list[RunTables], benchmark: str):
    """pass@1 vs measured tokens/s (infer stage) and vs experts per token; rows (run, split)."""
    rows, colours = _panel_rows(runs, benchmark)
    fig, axes = grid(len(rows), len(COST_AXES))
    fronts, notes = {}, []
    for r, (t, df, split) in enumerate(rows):
        for c, (x, label, higher) in enumerate(COST_AXES):
            skipped = True
            if x == "tokens_per_s":
                paths = set(df.loc[df["variant"] != DENSE, "skip_path"].dropna()) if "skip_path" in df else set()
                skipped = bool(paths - NOTHING_SKIPPED)
                label += "" if skipped else "\nnothing skipped on this path: no Pareto front"
                if split == _splits(df)[0]:
                    notes.append(f"{t.run}: tokens/s measured by {_measured_on(df)}; skip path "
                                 f"{', '.join(sorted(paths)) or 'n/a'} ({SKIP_PATHS})")  # fmt: skip
            fronts[(t.run, split, x)] = quality_panel(axes[r][c], df, x, label, higher, split, colours,
                                                      front=skipped)  # fmt: skip
            axes[r][c].set_title(f"{t.run}: {split} tests")
    fig.suptitle(f"{benchmark}: quality vs cost per skip variant")
    figure_note(fig, notes)
    return fig, fronts


def speedup_columns(runs: list[RunTables], hardware: list[str]) -> list[str]:
    """MEASURED and the CALIBRATED hardware profiles predicted in any run (config order first).
    An uncalibrated profile's bytes-floor prediction is no speedup: summary.md lists it as such,
    no panel draws it as a speedup (a tiny model would get launch-bound GPU "speedups")."""
    predicted = set()
    for t in runs:
        p = predicted_whole_model(t.predictions)
        predicted |= set(p.loc[p["calibration"] == "calibrated", "hardware"])
    replayed = [REPLAYED] if any(len(replayed_speedup(t.replay)) for t in runs) else []
    return [MEASURED] + replayed + [h for h in hardware if h in predicted] + sorted(predicted - set(hardware))


def sweep_source(m: pd.DataFrame) -> str:
    """'<engine> <version> on <device>; skip paths a, b' of measured throughput rows."""
    on = "; ".join(sorted({f"{r.engine} {r.engine_version} on {r.device}" for r in m.itertuples()}))
    return f"{on}; skip paths {', '.join(sorted(set(m['skip_path'])))}" if on else "n/a"


def speedup_at(t: RunTables, column: str, batch: int) -> tuple[pd.Series, str]:
    """variant -> speedup over dense at `batch`, and where it comes from (for the title)."""
    if column == MEASURED:
        m = measured_speedup(t.throughput)
        m = m[m["concurrency"] == batch].drop_duplicates("variant")
        return m.set_index("variant")["speedup"], f"measured ({sweep_source(m)})"
    if column == REPLAYED:
        r = replayed_speedup(t.replay)
        r = r[r["batch"] == batch]
        return r.set_index("variant")["speedup"], f"measured ({'; '.join(sorted(set(r['on']))) or 'n/a'})"
    p = predicted_whole_model(t.predictions)
    p = p[(p["hardware"] == column) & (p["batch"] == batch)]
    return p.set_index("variant")["speedup"], f"predicted ({prediction_source(t, column, p)})"


def prediction_source(t: RunTables, hardware: str, p: pd.DataFrame) -> str:
    """Skip path, calibration and (where checked) validation error of a profile's predictions."""
    cal = "; ".join(sorted(set(p["calibration_source"].dropna()) - {""})) or "uncalibrated: bytes floor only"
    hw, err = validation_error(t.validation)
    checked = f"; validation vs engine here {100 * err:+.0f}%" if hw == hardware and not np.isnan(err) else ""
    return f"roofline, hardware {hardware}, skip kernel (skipped expert never loaded), calibrated on {cal}{checked}"


def predicted_figure(runs: list[RunTables], benchmark: str, batch: int, hardware: list[str]):
    """pass@1 vs speedup over dense at the deployment batch: measured (filled) and
    predicted per hardware profile (hollow), Pareto front per panel; rows (run, split).
    Panel titles name the source in a line; how it was measured goes in the figure note."""
    columns = speedup_columns(runs, hardware)
    rows, colours = _panel_rows(runs, benchmark)
    fig, axes = grid(len(rows), len(columns), height=4.6)
    fronts, notes = {}, {}
    for r, (t, df, split) in enumerate(rows):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            speedup, source = speedup_at(t, column, batch)
            if speedup.empty:
                why = (f"no throughput sweep at concurrency {batch}" if column == MEASURED
                       else f"no measured replay at concurrency {batch}" if column == REPLAYED
                       else f"no {column} prediction at batch {batch}")  # fmt: skip
                no_data(ax, f"{t.run}: {why}")
                fronts[(t.run, split, column)] = []
                continue
            name = {MEASURED: "measured (engine)", REPLAYED: "measured (replay)"}.get(column, f"predicted, {column}")
            notes[(t.run, name)] = f"{t.run}, {name}: {source}"
            d = df.assign(speedup=df["variant"].map(speedup))
            label = f"tokens/s over dense at batch {batch}"
            if column == MEASURED:
                m = measured_speedup(t.throughput)
                paths = set(m.loc[(m["concurrency"] == batch) & (m["variant"] != DENSE), "skip_path"])
                skipped = bool(paths - NOTHING_SKIPPED)
                label += "" if skipped else "\nnothing skipped on this path: no Pareto front"
            elif column == REPLAYED:
                skipped = True
                label = f"routed experts' speedup over dense at batch {batch}, measured replay"
            else:
                skipped = True
                p = predicted_whole_model(t.predictions)
                floor = p[(p["hardware"] == column) & (p["batch"] == batch)].set_index("variant")["speedup_floor"]
                d = d.assign(floor=d["variant"].map(floor))
                label += f"\n(bar: to the bytes-floor prediction, up to {d['floor'].max():.2f})"
                ax.set_xlim(*calibrated_xlim(d["speedup"].dropna()))  # before the labels are placed
            fronts[(t.run, split, column)] = quality_panel(ax, d, "speedup", label, True, split, colours,
                                                           hollow=column not in MEASURED_COLUMNS, front=skipped)  # fmt: skip
            if column not in MEASURED_COLUMNS:
                floor_bands(ax, d.dropna(subset=["speedup", "floor", f"pass1_{split}"]), f"pass1_{split}", colours)
            ax.axvline(1.0, color="0.5", lw=0.8)
            ax.set_title(f"{t.run}, {split} tests: {name}")
    shared_legend(fig, [ax for row in axes for ax in row])
    fig.suptitle(f"{benchmark}: quality vs speedup at deployment batch {batch}\n"
                 "(filled: measured, hollow: predicted)")  # fmt: skip
    figure_note(fig, list(notes.values()) + [f"Skip paths: {SKIP_PATHS}."])
    return fig, fronts


def floor_bands(ax, band: pd.DataFrame, y: str, colours: dict) -> None:
    """Each variant's calibrated-to-bytes-floor band in its strategy's colour; variants at the same
    pass@1 are spread a little apart vertically so that every band stays visible."""
    band = band.sort_values(["speedup", "variant"])
    rank = band.groupby(y).cumcount().to_numpy()  # order among the bands of one height
    size = band.groupby(y)[y].transform("size").to_numpy()
    offset = (rank - (size - 1) / 2) * 0.012
    ax.hlines(band[y].to_numpy(float) + offset, band["speedup"], band["floor"], lw=1.6, alpha=0.45, zorder=1,
              colors=[colours.get(s, (0.5, 0.5, 0.5)) for s in band["strategy"]])  # fmt: skip


def fidelity_figure(runs: list[RunTables], benchmark: str):
    """Fidelity to dense's greedy completions vs experts per token; rows runs."""
    colours = colour_of(s for t in runs for s in with_strategy(t.scores)["strategy"])
    fig, axes = grid(len(runs), len(FIDELITY_AXES), height=5.0)  # tall enough for the y labels at 10 pt
    for r, t in enumerate(runs):
        df = with_strategy(t.scores[t.scores["benchmark"] == benchmark])
        for c, (y, label) in enumerate(FIDELITY_AXES):
            ax = axes[r][c]
            data = df.dropna(subset=["routed_per_decode_token", y])
            if data.empty:
                no_data(ax, f"{t.run}: no {label} (needs a dense variant and generations)")
                continue
            points = strategy_curves(ax, data, "routed_per_decode_token", y, colours, errors=False)
            ax.set_xlabel("routed experts computed per token per MoE layer")
            ax.set_ylabel(label)
            ax.set_title(f"{t.run}: {benchmark}")
            ax.grid(alpha=0.3)
            legend_below(ax)
            label_points(ax, points)
    fig.suptitle(f"{benchmark}: fidelity to the dense model vs experts per token")
    return fig


def pareto_table_figure(summary: pd.DataFrame, benchmark: str):
    """A table of the variants on the quality vs experts-per-token front (SUMMARY rows)."""
    rows = summary[(summary["benchmark"] == benchmark) & summary["pareto"]]
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.28 * max(len(rows), 1)))
    ax.axis("off")
    if rows.empty:
        no_data(ax, f"no scored variant of {benchmark} has experts per token")
        return fig
    batch = int(rows["deployment_batch"].iloc[0])
    header = ["run", "variant", "strategy", "pass@1 base", "pass@1 plus", "Δ vs dense (p)", "routed experts/decode token",
              "tok/s infer (meas.)", f"tok/s ratio @{batch} meas.", f"tok/s ratio @{batch} pred. (cal. / bytes floor)"]  # fmt: skip

    def fmt(x, spec):
        return "" if pd.isna(x) else format(x, spec)

    cells = []
    for r in rows.itertuples():
        split = "plus" if not pd.isna(r.delta_plus) else "base"
        delta, p = getattr(r, f"delta_{split}"), getattr(r, f"mcnemar_p_{split}")
        floor = "" if pd.isna(r.predicted_speedup_floor) else f"{r.predicted_speedup_floor:.2f}"
        pred = (f"{fmt(r.predicted_speedup, '.2f') or 'uncal.'} / {floor} ({r.predicted_hardware})" if floor
                else "")  # fmt: skip
        cells.append([r.run, r.variant, r.strategy or "", fmt(r.pass1_base, ".3f"), fmt(r.pass1_plus, ".3f"),
                      "" if pd.isna(delta) else f"{delta:+.3f} ({split}, p={p:.2g})", fmt(r.routed_per_decode_token, ".2f"),
                      fmt(r.tokens_per_s, ".1f"), fmt(r.measured_speedup, ".2f"), pred])  # fmt: skip
    table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(STYLE["legend.fontsize"])
    table.auto_set_column_width(list(range(len(header))))
    ax.set_title(f"{benchmark}: Pareto-optimal variants (pass@1 plus, else base, vs experts per token)")
    return fig
