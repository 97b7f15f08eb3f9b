"""Figure style shared by every report figure: readable at 100% zoom in a browser.

Text >= 9 pt; at most two panels per row (wide figures shrink to unreadable in the
report viewer); one hue per strategy, its settings as shades of it; point labels placed
where they overlap neither other labels nor points (greedy, deterministic).
"""

from __future__ import annotations

import colorsys
import math
import textwrap

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.transforms import Bbox

MIN_FONT = 9  # pt
STYLE = {
    "svg.hashsalt": "skipbench", "figure.dpi": 100,
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "figure.titlesize": 12,
    "xtick.labelsize": MIN_FONT, "ytick.labelsize": MIN_FONT, "legend.fontsize": MIN_FONT,
}  # fmt: skip
MAX_COLS = 2
# Hues far apart (tab10 without its green and grey, olive darkened, three more); green is the
# Pareto front's, black dense's. With a marker each (MARKERS), no two strategies look alike
# even past the palette's length (12 strategies today).
PALETTE = ["#1f77b4", "#ff7f0e", "#9467bd", "#d62728", "#17becf", "#8c564b", "#e377c2", "#7f7f00", "#4b0082",
           "#b8860b", "#2f4f4f", "#ff69b4"]  # fmt: skip
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d"]
FRONT_COLOUR = "#009E73"
FIXED = {"dense": (0.0, 0.0, 0.0), "external": (0.5, 0.5, 0.5)}
FIXED_MARKERS = {"dense": "*", "external": "x"}


def _others(strategies) -> list[str]:
    return sorted({s for s in strategies if s not in FIXED})


def strategy_colours(strategies) -> dict[str, tuple]:
    """A hue per strategy (sorted names: stable across runs), dense black, external grey."""
    return {s: to_rgb(PALETTE[i % len(PALETTE)]) for i, s in enumerate(_others(strategies))} | FIXED


def strategy_markers(strategies) -> dict[str, str]:
    """A marker per strategy, in the order of strategy_colours: (colour, marker) never repeats."""
    return {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(_others(strategies))} | FIXED_MARKERS


def shades(base: tuple, n: int) -> list[tuple]:
    """n shades of `base`, dark to light, all distinguishable from white."""
    if n <= 1:
        return [base]
    h, light, s = colorsys.rgb_to_hls(*base)
    lo, hi = max(0.22, light - 0.22), min(0.72, light + 0.22)
    return [colorsys.hls_to_rgb(h, lo + (hi - lo) * i / (n - 1), s) for i, _ in enumerate(range(n))]


def variant_colours(strategy_of: dict[str, str], hues: dict[str, tuple] | None = None) -> dict[str, tuple]:
    """variant -> colour: its strategy's hue (from `hues`, the figure's strategy colours,
    so every panel agrees), one shade per variant of that strategy (sorted)."""
    hues = {**strategy_colours(strategy_of.values()), **(hues or {})}
    out = {}
    for strategy in sorted(set(strategy_of.values())):
        variants = sorted(v for v, s in strategy_of.items() if s == strategy)
        for v, c in zip(variants, shades(hues[strategy], len(variants))):
            out[v] = c
    return out


def panel_grid(rows: int, cols: int, width: float = 5.2, height: float = 4.2):
    """A figure for a logical rows x cols grid of panels, wrapped to MAX_COLS per row.
    Returns (fig, axes) with axes[r][c] the logical panel; spare cells are removed, so
    fig.axes lists the panels row by row."""
    rows, cols = max(rows, 1), max(cols, 1)
    per_row = min(cols, MAX_COLS)
    lines = math.ceil(cols / per_row)  # physical rows per logical row
    fig, grid_axes = plt.subplots(rows * lines, per_row, figsize=(width * per_row, height * rows * lines),
                                  squeeze=False, layout="constrained")  # fmt: skip
    axes = [[grid_axes[r * lines + c // per_row][c % per_row] for c in range(cols)] for r in range(rows)]
    used = {id(ax) for row in axes for ax in row}
    for ax in grid_axes.flat:
        if id(ax) not in used:
            ax.remove()
    return fig, axes


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


# Offsets (points) tried for a label, nearest first; far ones get a leader line.
_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3.2, 4.5, 6) for dx, dy in
            ((5, 4), (5, -12), (-5, 4), (-5, -12), (0, 9), (0, -17), (9, -4), (-9, -4))]  # fmt: skip


def panel_text(ax, text: str, fontsize: float = 10) -> str:
    """`text` wrapped, paragraph by paragraph, to the width of `ax` (matplotlib's wrap=True
    wraps to the figure's edge, so a left panel's label runs under its neighbour)."""
    fig = ax.figure
    width_pt = ax.get_position().width * fig.get_figwidth() * 72
    chars = max(20, int(width_pt / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def figure_note(fig, lines: list[str], fontsize: float = MIN_FONT) -> None:
    """Where the numbers come from (engine, device, calibration), under the figure: titles
    stay at most two lines and say what a panel is, this says how it was measured."""
    chars = max(40, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    text = "\n".join(textwrap.fill(line, chars) for line in lines if line)
    fig.text(0.01, 0.0, text, ha="left", va="top", fontsize=fontsize, color="0.25")


def span_with(values, anchor: float = 1.0, min_span: float = 0.5) -> tuple[float, float]:
    """Axis limits that include `anchor` and every value, at least `min_span` wide: a ratio
    axis zoomed to a few percent would show noise as a trend."""
    vals = [v for v in values if v == v] + [anchor]  # v == v: not NaN
    lo, hi = min(vals), max(vals)
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def label_points(ax, points: list[tuple[float, float, str, tuple]]) -> None:
    """Name each (x, y, text, colour) point of `ax` when the figure is final (`place_labels`)."""
    ax._skipbench_labels = list(points)  # read by place_labels; an Axes has no other slot for it


def legend_below(ax) -> None:
    """The legend under the axes (inside, it would cover points and their labels); moved
    below the x axis label by `place_labels`, once that label's wrapped height is known."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, frameon=False)


def shared_legend(fig, axes: list) -> None:
    """One legend for panels that share their colours: the last panel's, beside it where the
    grid leaves that cell empty (an odd number of panels: no blank quadrant), else below it."""
    panels = [ax for ax in axes if ax.get_legend() is not None]
    if not panels:
        return
    for ax in panels[:-1]:
        ax.get_legend().remove()
    last = panels[-1]
    if len(axes) % MAX_COLS and len(axes) > 1:
        handles, labels = last.get_legend_handles_labels()
        last.get_legend().remove()
        legend = last.legend(handles, labels, loc="center left", bbox_to_anchor=(1.08, 0.5), ncols=2, frameon=False)
        legend.set_in_layout(False)  # it sits in the empty cell: no room to reserve
        legend.skipbench_beside = True  # read by _legends_under_xlabels: leave it where it is


def _legends_under_xlabels(fig) -> None:
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if ax.get_legend() is not None and not getattr(ax.get_legend(), "skipbench_beside", False):
            bottom = ax.xaxis.get_tightbbox(renderer).y0  # tick labels and the (wrapped) axis label
            y = ax.transAxes.inverted().transform((0, bottom))[1]
            ax.get_legend().set_bbox_to_anchor((0.5, y - 0.02), transform=ax.transAxes)


def place_labels(fig, fontsize: float = MIN_FONT) -> None:
    """Place every label of `label_points`, after a layout pass of the whole figure (and a
    second one once the legends sit under their axis labels)."""
    if fig.get_layout_engine() is not None:
        for _ in range(3):  # each layout pass moves the axis labels a little: settle the legends
            fig.get_layout_engine().execute(fig)
            _legends_under_xlabels(fig)
        fig.get_layout_engine().execute(fig)
    for ax in fig.axes:
        if getattr(ax, "_skipbench_labels", None):
            _place(ax, ax._skipbench_labels, fontsize)
            ax._skipbench_labels = []


def _place(ax, points: list[tuple[float, float, str, tuple]], fontsize: float) -> list:
    """Name each (x, y, text, colour) point without overlapping other labels, points or lines.

    Greedy in the order given: every label takes the first offset whose box is inside the
    axes and free, else the offset with the least overlap."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi / 72
    frame = ax.get_window_extent(renderer)
    pad = 3 * to_px
    taken = []  # display boxes of markers and placed labels

    for x, y, text, _ in points:
        px, py = ax.transData.transform((x, y))
        r = 2.2 * pad if text in FIXED else 1.3 * pad  # dense's star is twice a setting's marker
        taken.append(Bbox([[px - r, py - r], [px + r, py + r]]))
    for line in ax.lines:  # curves and the front: labels keep off them too (sampled)
        xy = ax.transData.transform(line.get_xydata())
        for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:]):
            steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / (4 * pad)))
            for i in range(steps + 1):
                px, py = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
                taken.append(Bbox([[px - pad / 2, py - pad / 2], [px + pad / 2, py + pad / 2]]))
    labels = []
    for x, y, text, colour in points:
        ann = ax.annotate(text, (x, y), xytext=_OFFSETS[0], textcoords="offset points", fontsize=fontsize,
                          color=colour, ha="left", va="bottom", annotation_clip=False)  # fmt: skip
        best, best_cost = None, math.inf
        for dx, dy in _OFFSETS:
            ann.set_ha("left" if dx > 0 else "right" if dx < 0 else "center")
            ann.xyann = (dx, dy)
            box = ann.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, frame)
            cost = sum(_overlap(box, t) for t in taken) + 20 * outside  # outside: over tick labels or a neighbour panel
            if cost < best_cost:
                best, best_cost = ((dx, dy), ann.get_ha(), box), cost
            if cost == 0:
                break
        (dx, dy), ha, box = best
        ann.remove()
        far = math.hypot(dx, dy) > 20  # a leader line says which point a distant label names
        ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, color=colour,
                          ha=ha, va="bottom", annotation_clip=False,
                          arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.6, "shrinkA": 0, "shrinkB": 3} if far else None)  # fmt: skip
        taken.append(box.padded(to_px))  # a gap between neighbouring names
        labels.append(ann)
    return labels
