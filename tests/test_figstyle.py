"""Figure style: >= 9 pt text, two panels per row, strategy hues with variant shades, and
point labels that overlap neither each other nor the points."""

import matplotlib.pyplot as plt
from matplotlib.text import Text

from report_fixtures import write_run
from skipbench.report.figstyle import MAX_COLS, MIN_FONT, STYLE, panel_grid, place_labels, strategy_colours, variant_colours
from skipbench.report.figures import predicted_figure, speedup_columns, tradeoff_figure
from skipbench.report.summary import load_run


def test_panel_grid_wraps_to_two_per_row():
    fig, axes = panel_grid(2, 3)
    assert len(axes) == 2 and all(len(row) == 3 for row in axes)
    assert len(fig.axes) == 6  # the spare cells are gone
    cols = {round(ax.get_position().x0, 3) for ax in fig.axes}
    assert len(cols) == MAX_COLS
    plt.close(fig)


def test_strategies_apart_variants_shades():
    v = variant_colours({"top1": "topk", "top2": "topk", "top3": "topk", "thr": "threshold", "dense": "dense"})
    assert v["dense"] == (0.0, 0.0, 0.0)
    assert len({v["top1"], v["top2"], v["top3"]}) == 3  # shades differ
    hue = strategy_colours(["topk", "threshold"])
    assert hue["topk"] != hue["threshold"]
    # fixed hues when the figure passes its own (every panel agrees)
    assert variant_colours({"top1": "topk"}, hue)["top1"] == hue["topk"]


def _labels(fig):
    return [t for ax in fig.axes for t in ax.texts if isinstance(t, Text) and t.get_text()]


def test_figures_text_readable_and_labels_do_not_overlap(tmp_path):
    f = write_run(tmp_path)
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    with plt.rc_context(STYLE):
        figs = [tradeoff_figure([run], "he")[0],
                predicted_figure([run], "he", 1, speedup_columns([run], ["h200"]))[0]]  # fmt: skip
        for fig in figs:
            place_labels(fig)
            fig.canvas.draw()
            texts = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
            assert texts and min(t.get_fontsize() for t in texts) >= MIN_FONT
            renderer = fig.canvas.get_renderer()
            for ax in fig.axes:
                boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
                assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), ax.get_title()
            assert max(len({round(ax.get_position().x0, 2) for ax in fig.axes}), 1) <= MAX_COLS
            assert len(_labels(fig)) >= 5
            plt.close(fig)
