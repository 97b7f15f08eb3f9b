"""Figures of throughput and expert traffic: speedup vs batch size, per-layer heatmaps.

Measured and predicted numbers never share a line style: measured points are filled
markers on solid lines, predicted curves dashed with hollow markers, and every panel title
says where its numbers come from (engine and device, or hardware profile).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patheffects import withStroke

from skipbench.report.figstyle import MIN_FONT, figure_note, shared_legend, span_with
from skipbench.report.figstyle import variant_colours as shaded_colours
from skipbench.report.figures import MEASURED, MEASURED_COLUMNS, NOTHING_SKIPPED, REPLAYED, grid, no_data, prediction_source, sweep_source, with_strategy
from skipbench.report.summary import ALL_LAYERS, DENSE, RunTables, measured_speedup, predicted_whole_model, replayed_speedup

def variant_colours(variants, runs: list[RunTables] = ()) -> dict[str, tuple]:
    """A shade of its strategy's hue per variant (strategies from the runs' scores)."""
    strategy_of = {v: s for t in runs for v, s in zip(t.scores["variant"], with_strategy(t.scores)["strategy"])}
    return shaded_colours({v: strategy_of.get(v, v) for v in set(variants) - {DENSE}})


def speedup_figure(runs: list[RunTables], columns: list[str]):
    """Speedup over dense vs batch size, per variant; rows runs, columns MEASURED and
    hardware profiles (whole-model skip_kernel predictions; weight0 would be 1 by construction)."""
    data = {}  # (run, column) -> rows variant, batch, speedup
    for t in runs:
        m = measured_speedup(t.throughput)
        data[(t.run, MEASURED)] = m.rename(columns={"concurrency": "batch"})
        data[(t.run, REPLAYED)] = replayed_speedup(t.replay)
        p = predicted_whole_model(t.predictions)
        for h in (c for c in columns if c not in MEASURED_COLUMNS):
            data[(t.run, h)] = p[p["hardware"] == h]
    colours = variant_colours((v for d in data.values() for v in d["variant"]), runs)
    fig, axes = grid(len(runs), len(columns), height=5.2)  # tall enough for the y label at 10 pt
    notes = []
    for r, t in enumerate(runs):
        for c, column in enumerate(columns):
            ax, d = axes[r][c], data[(t.run, column)]
            d = d[d["variant"] != DENSE].dropna(subset=["speedup"])
            if d.empty:
                no_data(ax, f"{t.run}: " + ("no throughput sweep" if column == MEASURED
                                            else "no measured replay" if column == REPLAYED
                                            else f"no {column} predictions"))  # fmt: skip
                continue
            measured = column in MEASURED_COLUMNS
            for variant, g in d.groupby("variant", sort=True):
                g = g.sort_values("batch")
                ax.plot(g["batch"], g["speedup"], "-o" if measured else "--o", color=colours[variant],
                        mfc=colours[variant] if measured else "none", ms=5, lw=1.2, label=variant)  # fmt: skip
                if not measured:  # the band: calibrated (line) to bytes floor (shade)
                    ax.fill_between(g["batch"], g["speedup"], g["speedup_floor"], color=colours[variant], alpha=0.12)
            ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size (concurrent sequences, constant load)")
            if column == REPLAYED:
                ax.set_ylabel("routed experts' speedup over dense\n(measured replay)")
                ax.set_title(f"{t.run}: measured (replay)")
                ax.set_ylim(*span_with(d["speedup"]))
                notes.append(f"{t.run}, measured replay: {'; '.join(sorted(set(d['on'])))}")
            elif measured:
                paths = set(d["skip_path"])
                nothing = "" if paths - NOTHING_SKIPPED else "\n(nothing skipped on this path)"
                ax.set_ylabel(f"output tokens/s over dense{nothing}")
                ax.set_title(f"{t.run}: measured (engine)")
                ax.set_ylim(*span_with(d["speedup"]))  # 1.0 in view, never zoomed on a few percent of noise
                notes.append(f"{t.run}, measured: {sweep_source(d)}")
            else:
                ax.set_ylabel("decode tokens/s over dense\n(line: calibrated, shade: to bytes floor)")
                ax.set_title(f"{t.run}: predicted, {column}")
                ax.set_ylim(*span_with(pd.concat([d["speedup"], d["speedup_floor"]])))
                notes.append(f"{t.run}, predicted {column}: {prediction_source(t, column, d)}")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, frameon=False)
    shared_legend(fig, [ax for row in axes for ax in row])
    fig.suptitle("tokens/s over dense vs batch size at equal load\n(solid, filled: measured; dashed, hollow: predicted)")
    figure_note(fig, notes + ["weight0 skipping computes the expert: 1 by construction. Uncalibrated profiles: "
                              "no panel, bytes floor in summary.md."])  # fmt: skip
    return fig


# Skip rate is K minus experts per token over K: one of the two says it all. Distinct experts
# per step is what a batch loads.
HEATMAPS = [
    ("experts_per_token", "routed experts computed per token", "viridis"),
    ("distinct_mean", "distinct experts loaded per step", "cividis"),
]
REROUTES = {"prune", "group"}  # strategies that send a token to other experts instead of fewer


def _heatmap(ax, t: pd.DataFrame, column: str, title: str, cmap: str, order: list[str], names: dict) -> None:
    wide = t.pivot_table(index="variant", columns="layer", values=column, aggfunc="first").reindex(order)
    values = wide.to_numpy(dtype=float)  # variants, layers
    mesh = ax.pcolormesh(values, cmap=cmap, edgecolors="w", linewidth=0.3)
    ax.figure.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
    ax.set_yticks(np.arange(len(wide.index)) + 0.5, [names.get(v, v) for v in wide.index])
    ax.invert_yaxis()  # the first of `order` on top
    ax.set_xticks(np.arange(len(wide.columns)) + 0.5, [str(c) for c in wide.columns], fontsize=MIN_FONT)
    ax.set_xlabel("MoE layer")
    ax.set_title(title)
    if values.size <= 120:  # small grids: print the numbers
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(j + 0.5, i + 0.5, f"{v:.2g}", ha="center", va="center", fontsize=MIN_FONT,
                        path_effects=[withStroke(linewidth=1.5, foreground="w")])


def layer_order(per_token: pd.DataFrame) -> list[str]:
    """Variants by what the heatmaps show: most experts per token (dense) first, then the
    name (a stable order among equals)."""
    mean = per_token.groupby("variant")["experts_per_token"].mean()
    return sorted(mean.index, key=lambda v: (-mean[v], v))


def layers_figure(runs: list[RunTables], benchmark: str, batch: int):
    """Per-layer experts per token and distinct experts per step (at `batch`, or the nearest
    swept concurrency), heatmaps of variant x MoE layer, rows sorted by experts per token;
    re-routing strategies (prune, group) marked: they change which experts, not how many."""
    n_variants = max([t.traffic[benchmark]["variant"].nunique() for t in runs if benchmark in t.traffic] or [1])
    fig, axes = grid(len(runs), len(HEATMAPS), width=5.6, height=1.6 + 0.32 * n_variants)
    for r, t in enumerate(runs):
        traffic = t.traffic.get(benchmark)
        if traffic is None or traffic.empty:
            for ax in axes[r]:
                no_data(ax, f"{t.run}: no routing trace / traffic table for {benchmark}")
            continue
        strategy_of = dict(zip(t.scores["variant"], with_strategy(t.scores)["strategy"]))
        names = {v: f"{v} (re-routes)" for v, s in strategy_of.items() if s in REROUTES}
        layers = traffic[traffic["layer"] != ALL_LAYERS]
        swept = np.array(sorted(set(layers["concurrency"])))
        at = int(swept[np.argmin(np.abs(swept - batch))])
        # experts per token count every token once: any concurrency gives them
        per_token = layers[layers["concurrency"] == swept[0]]
        order = layer_order(per_token)
        for c, (column, title, cmap) in enumerate(HEATMAPS):
            d = layers[layers["concurrency"] == at] if column == "distinct_mean" else per_token
            suffix = f" at batch {at}" + ("" if at == batch else f" (nearest to {batch})") if column == "distinct_mean" else ""
            filled = int(d["c_effective"].min()) if len(d) else at
            if column == "distinct_mean" and filled < at:  # the traces hold fewer sequences than slots
                suffix += f"\n(only {filled} sequences traced: replayed at batch {filled})"
            _heatmap(axes[r][c], d, column, f"{t.run}: {title}{suffix}", cmap, order, names)
    fig.suptitle(f"{benchmark}: routed-expert use per MoE layer (routing traces replayed)")
    figure_note(fig, ["Rows: most experts per token first. (re-routes): the strategy sends a token to other experts "
                      "(pruned experts' tokens to the next ranked, group limits to the kept groups), so it computes "
                      "as many experts as dense and skips none."])  # fmt: skip
    return fig
