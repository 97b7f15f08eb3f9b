"""Stage 7: quality-vs-cost trade-off figures from the scores table.

Figures are deterministic for the same input (fixed SVG hash salt, no dates), so a rerun
that changes nothing upstream changes no bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from skipbench.io import atomic_path, read_table  # noqa: E402

log = logging.getLogger(__name__)

DENSE = "dense"
STYLE = {"svg.hashsalt": "skipbench", "figure.dpi": 100, "font.size": 9}
# What each panel puts on x: (column, label, higher is better).
COST_AXES = [
    ("tokens_per_s", "measured output tokens/s", True),
    ("experts_per_token", "routed experts computed per token per MoE layer", False),
]


def pareto_front(xs: list[float], ys: list[float], x_higher_better: bool = True) -> list[int]:
    """Indices of points not dominated by another (y always higher-better), sorted by x.

    A point is dominated when another is at least as good on both axes and better on one.
    """
    sign = 1 if x_higher_better else -1
    pts = [(sign * x, y, i) for i, (x, y) in enumerate(zip(xs, ys))]
    front = [
        i
        for x, y, i in pts
        if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2, _ in pts)
    ]
    return sorted(front, key=lambda i: xs[i])


def _save(fig, path: Path) -> None:
    fmt = path.suffix.lstrip(".")
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, metadata=metadata, bbox_inches="tight")


def _panel(ax, df: pd.DataFrame, x: str, x_label: str, x_higher: bool, split: str) -> None:
    y = f"pass1_{split}"
    data = df.dropna(subset=[x, y])
    lo, hi = data[f"{y}_lo"], data[f"{y}_hi"]
    ax.errorbar(data[x], data[y], yerr=[data[y] - lo, hi - data[y]], fmt="o", color="tab:blue",
                ecolor="0.6", capsize=3, label="variant (95% CI)")
    for _, row in data.iterrows():
        ax.annotate(row["variant"], (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    dense = data[data["variant"] == DENSE]
    if not dense.empty:
        ax.scatter(dense[x], dense[y], s=140, facecolors="none", edgecolors="tab:red", zorder=3, label="dense baseline")
    front = pareto_front(data[x].tolist(), data[y].tolist(), x_higher)
    ax.plot(data[x].iloc[front], data[y].iloc[front], "--", color="tab:green", label="Pareto front")
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"pass@1 ({split} tests)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)


def draw_tradeoff(scores: pd.DataFrame, benchmark: str, out_dir: Path, run: str) -> list[Path]:
    df = scores[scores["benchmark"] == benchmark].sort_values("variant").reset_index(drop=True)
    splits = [s for s in ("base", "plus") if df[f"pass1_{s}"].notna().any()]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(splits), len(COST_AXES), figsize=(10, 4 * len(splits)), squeeze=False)
        for r, split in enumerate(splits):
            for c, (x, label, higher) in enumerate(COST_AXES):
                _panel(axes[r][c], df, x, label, higher, split)
        engine = ", ".join(sorted(set(df["engine"].dropna()))) if "engine" in df else ""
        device = ", ".join(sorted(set(df["device"].dropna()))) if "device" in df else ""
        fig.suptitle(f"{run}: {benchmark} quality vs cost (measured on {engine} / {device})")
        axes[0][0].legend(loc="best", fontsize=7)
        paths = [out_dir / f"tradeoff_{benchmark}.{ext}" for ext in ("png", "svg")]
        for p in paths:
            _save(fig, p)
        plt.close(fig)
    return paths


def draw_tradeoffs(scores_path: Path, out_dir: Path, run: str) -> list[Path]:
    scores = read_table(scores_path).to_pandas()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for benchmark in sorted(scores["benchmark"].unique()):
        paths += draw_tradeoff(scores, benchmark, out_dir, run)
        log.info("drew %s", benchmark)
    return paths
