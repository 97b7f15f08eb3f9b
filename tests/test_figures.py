"""The figure stage on hand-made Parquet tables: the Pareto fronts it draws against hand-computed
ones, measured vs predicted styling, determinism, absent inputs, runs combined by model."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from report_fixtures import (
    FRONT_BASE_VS_EPT,
    FRONT_BASE_VS_TPS,
    FRONT_PLUS_VS_EPT,
    FRONT_PLUS_VS_MEASURED,
    FRONT_PLUS_VS_PREDICTED,
    FRONT_PLUS_VS_TPS,
    PREDICTED_H200,
    SWEEP,
    VARIANTS,
    scores_rows,
    write_run,
    write_scores,
)

from skipbench.report import draw_report, report_files
from skipbench.report.figures import MEASURED, pareto_front, predicted_figure, speedup_columns, tradeoff_figure
from skipbench.report.figures_traffic import layers_figure, speedup_figure
from skipbench.report.summary import load_run


def note_of(fig) -> str:
    """The figure's note (figstyle.figure_note): where its numbers come from."""
    return " ".join(one_line(t.get_text()) for t in fig.texts)


def one_line(text: str) -> str:
    """A title or axis label as one line (figstyle.panel_text wraps them to the panel)."""
    return " ".join(text.split())


def test_pareto_front_hand_computed():
    # (throughput, quality): b dominates d; a, b, c trade off; e is dominated by c.
    xs = [10, 20, 30, 15, 28]
    ys = [0.9, 0.8, 0.5, 0.7, 0.4]
    assert pareto_front(xs, ys) == [0, 1, 2]
    # Lower-is-better x (experts per token): the same points seen as costs.
    assert pareto_front(xs, ys, x_higher_better=False) == [0]
    # Ties: identical points are not dominated by each other.
    assert pareto_front([1, 1], [0.5, 0.5]) == [0, 1]


def front_line(ax):
    """(x, y) points of the line labelled 'Pareto front' drawn on `ax`, flattened."""
    (line,) = [l for l in ax.get_lines() if l.get_label() == "Pareto front"]
    return line.get_xydata().ravel().tolist()


def flat(pairs):
    return [v for pair in pairs for v in pair]


def points(names, x, split):
    col = {"tokens_per_s": 1, "routed_per_decode_token": 2}[x]
    y = {"base": 3, "plus": 4}[split]
    return [(VARIANTS[n][col], VARIANTS[n][y]) for n in names]


def test_tradeoff_no_front_over_weight0_throughput(tmp_path):
    files = write_run(tmp_path, optional=False)  # fixture: non-dense variants ran on the weight0 path
    fig, fronts = tradeoff_figure([load_run("tiny", files["scores"])], "he")
    tps_base, ept_base = fig.axes[:2]
    assert fronts[("tiny", "base", "tokens_per_s")] == [] and fronts[("tiny", "plus", "tokens_per_s")] == []
    assert not [l for l in tps_base.get_lines() if l.get_label() == "Pareto front"]
    assert "nothing skipped on this path" in one_line(tps_base.get_xlabel()) and "weight0" in note_of(fig)
    assert fronts[("tiny", "base", "routed_per_decode_token")] == FRONT_BASE_VS_EPT  # experts/token still ranks them
    plt.close(fig)


def test_tradeoff_draws_the_hand_computed_front(tmp_path):
    files = write_run(tmp_path, optional=False)
    run = load_run("tiny", files["scores"])
    run.scores["skip_path"] = run.scores["skip_path"].replace("weight0", "skip_kernel")  # a real skip path
    fig, fronts = tradeoff_figure([run], "he")
    expected = [("base", "tokens_per_s", FRONT_BASE_VS_TPS), ("base", "routed_per_decode_token", FRONT_BASE_VS_EPT),
                ("plus", "tokens_per_s", FRONT_PLUS_VS_TPS), ("plus", "routed_per_decode_token", FRONT_PLUS_VS_EPT)]  # fmt: skip
    assert len(fig.axes) == 4  # rows (base, plus) x columns (tokens/s, experts/token), row-major
    for ax, (split, x, names) in zip(fig.axes, expected):
        assert fronts[("tiny", split, x)] == names
        assert front_line(ax) == pytest.approx(flat(points(names, x, split)))
    plt.close(fig)


def test_predicted_figure_separates_measured_and_predicted(tmp_path):
    f = write_run(tmp_path)
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    columns = speedup_columns([run], ["h200", "h800", "this-machine"])
    assert columns == [MEASURED, "h200", "this-machine"]  # the engine sweep, then CALIBRATED profiles in config order
    fig, fronts = predicted_figure([run], "he", batch=1, hardware=columns)
    assert fronts[("tiny", "plus", MEASURED)] == []  # weight0: nothing skipped, no front
    assert fronts[("tiny", "plus", "h200")] == FRONT_PLUS_VS_PREDICTED
    # panels in (split, column) order, at most two a row: find the plus-test ones by title
    plus_measured, plus_h200, plus_here = [ax for ax in fig.axes if "plus tests" in one_line(ax.get_title())]
    assert "nothing skipped on this path" in one_line(plus_measured.get_xlabel())
    assert "bytes-floor prediction" in one_line(plus_h200.get_xlabel()) and "h200 fit" in note_of(fig)
    assert "validation vs engine here -40%" in note_of(fig) and "cpu:x86_64x2" in note_of(fig)
    want = [(PREDICTED_H200[v], VARIANTS[v][4]) for v in FRONT_PLUS_VS_PREDICTED]
    assert front_line(plus_h200) == pytest.approx(flat(want))
    assert "measured" in one_line(plus_measured.get_title())
    assert "predicted" in one_line(plus_h200.get_title()) and "h200" in one_line(plus_h200.get_title())
    # measured markers filled, predicted hollow
    def faces(ax):
        (topk,) = [c for c in ax.containers if c.get_label() == "topk"]  # errorbar: data line first
        return topk.lines[0].get_markerfacecolor()

    assert faces(plus_measured) != "none" and faces(plus_h200) == "none"
    plt.close(fig)


def test_replayed_speedups_are_filled_measured_points(tmp_path):
    """The measured replay (skipbench.speed.replay) is its own measured column: solid, filled, titled with
    device, path and expert width, in both speed figures."""
    from skipbench.speed.replay import add_speedup
    from skipbench.report.figures import REPLAYED

    f = write_run(tmp_path)
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    run.replay = {"he": add_speedup(pd.DataFrame(
        [dict(variant=v, concurrency=c, path="cpu_eager", device="cpu:x", expert_shape="2048x1408 float32",
              ms_per_step=t * c, status="measured") for v, t in (("dense", 8.0), ("top1", 2.0)) for c in (1, 4)]))}
    columns = speedup_columns([run], ["h200"])
    assert columns == [MEASURED, REPLAYED, "h200", "this-machine"]
    fig = speedup_figure([run], columns)
    replayed = fig.axes[1]
    (top1,) = [l for l in replayed.get_lines() if l.get_label() == "top1"]
    assert top1.get_linestyle() == "-" and top1.get_xydata().ravel().tolist() == pytest.approx([1, 4.0, 4, 4.0])
    assert "replayed on cpu:x cpu_eager, experts 2048x1408 float32" in note_of(fig)  # sources sit in the note
    plt.close(fig)
    fig, fronts = predicted_figure([run], "he", batch=1, hardware=columns)
    (panel,) = [ax for ax in fig.axes if "plus tests" in one_line(ax.get_title()) and "(replay)" in one_line(ax.get_title())]
    assert "measured replay" in one_line(panel.get_xlabel()) and ("tiny", "plus", REPLAYED) in fronts
    plt.close(fig)


def test_speedup_figure_measured_solid_predicted_dashed(tmp_path):
    f = write_run(tmp_path)
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    fig = speedup_figure([run], [MEASURED, "h200"])
    measured, predicted = fig.axes[:2]
    (top1,) = [l for l in measured.get_lines() if l.get_label() == "top1"]
    assert top1.get_linestyle() == "-"
    want = [(c, SWEEP["top1"][c] / SWEEP["dense"][c]) for c in (1, 4)]
    assert top1.get_xydata().ravel().tolist() == pytest.approx(flat(want))
    assert {l.get_linestyle() for l in predicted.get_lines() if l.get_label() in VARIANTS} == {"--"}
    assert "solid, filled: measured; dashed, hollow: predicted" in one_line(fig._suptitle.get_text())
    plt.close(fig)


def test_layers_figure_says_when_the_batch_exceeds_the_traced_sequences(tmp_path):
    f = write_run(tmp_path)
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    titles = {b: [one_line(ax.get_title()) for ax in layers_figure([run], "he", b).axes] for b in (4, 16)}
    assert not any("sequences traced" in t for t in titles[4])
    assert any("at batch 16 (only 10 sequences traced: replayed at batch 10)" in t for t in titles[16])
    plt.close("all")


def draw(tmp_path, name, runs, benchmarks=("he",)):
    out = tmp_path / name
    return out, draw_report(runs, list(benchmarks), out, out / "summary.parquet", out / "summary.md", 1, ["h200"])


def test_report_files_fixed_list_and_deterministic(tmp_path):
    f = write_run(tmp_path / "run")
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    a, _ = draw(tmp_path, "a", [run])
    b, _ = draw(tmp_path, "b", [run])
    expected = [p for pair in report_files(a, ["he"]).values() for p in pair]
    assert sorted(p.name for p in a.iterdir()) == sorted([p.name for p in expected] + ["summary.md", "summary.parquet"])
    for p in expected:
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    assert b"no data" not in (a / "layers_he.svg").read_bytes()


def test_absent_inputs_give_no_data_figures(tmp_path):
    f = write_run(tmp_path / "run", optional=False)  # scores only: no sweep, no roofline, no traces
    out, result = draw(tmp_path, "out", [load_run("tiny", f["scores"])])
    for stem, paths in report_files(out, ["he"]).items():
        assert all(p.stat().st_size > 1000 for p in paths), stem
    assert b"<!-- no data: tiny: no routing trace / traffic table for he -->" in (out / "layers_he.svg").read_bytes()
    assert b"<!-- no data: tiny: no throughput sweep -->" in (out / "speedup.svg").read_bytes()
    assert b"no data: tiny: no throughput sweep at concurrency 1" in (out / "predicted_he.svg").read_bytes()
    assert b"no data" not in (out / "tradeoff_he.svg").read_bytes()
    assert result["summary"]["measured_speedup"].isna().all() and result["summary"]["predicted_speedup"].isna().all()


def test_combined_runs_are_faceted_by_run(tmp_path):
    f = write_run(tmp_path / "a")
    g = write_run(tmp_path / "b", optional=False)
    runs = [load_run("model-a", f["scores"], f["throughput"], f["predictions"], f["traffic"]), load_run("model-b", g["scores"])]
    fig, fronts = tradeoff_figure(runs, "he")
    assert len(fig.axes) == 8  # (2 runs x 2 splits) rows x 2 cost columns
    assert [one_line(ax.get_title()) for ax in fig.axes[::2]] == [f"{r}: {s} tests" for r in ("model-a", "model-b") for s in ("base", "plus")]
    assert fronts[("model-b", "plus", "routed_per_decode_token")] == FRONT_PLUS_VS_EPT
    plt.close(fig)
    out, result = draw(tmp_path, "out", runs)
    assert list(result["summary"]["run"].unique()) == ["model-a", "model-b"]
    assert b"no data: model-b: no throughput sweep" in (out / "speedup.svg").read_bytes()


def test_error_bars_tolerate_bounds_a_hair_inside_pass_at_1(tmp_path):
    # pass@1 = 1 with a float Wilson bound 0.9999999999999999 once crashed matplotlib.
    rows = scores_rows(with_plus=False)
    rows[0] |= {"pass1_base": 1.0, "pass1_base_lo": 0.72, "pass1_base_hi": 1.0 - 1e-16}
    path = write_scores(tmp_path / "scores.parquet", rows)
    fig, _ = tradeoff_figure([load_run("tiny", path)], "he")
    plt.close(fig)


def test_every_figure_keeps_titles_short_and_strategies_apart(tmp_path):
    """Layout rules of issue 25: titles at most two lines, no two strategies with the same
    colour and marker, no line joining one strategy's points, ratio axes that include 1.0."""
    import matplotlib.colors as mcolors

    from skipbench.report.figstyle import strategy_colours, strategy_markers
    from skipbench.skip.strategies import STRATEGIES

    f = write_run(tmp_path / "run")
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    columns = speedup_columns([run], ["h200"])
    figs = [tradeoff_figure([run], "he")[0], predicted_figure([run], "he", 1, columns)[0], speedup_figure([run], columns)]
    for fig in figs:
        titles = [fig._suptitle.get_text()] + [ax.get_title() for ax in fig.axes]
        assert all(t.count("\n") <= 1 for t in titles), titles
        for ax in fig.axes[:1]:
            for c in ax.containers:  # errorbar: the data line carries the points only
                assert c.lines[0].get_linestyle() == "None", c.get_label()
    measured = figs[2].axes[0]
    lo, hi = measured.get_ylim()
    assert lo < 1.0 < hi and hi - lo >= 0.5
    for fig in figs:
        plt.close(fig)
    names = list(STRATEGIES) + ["external"]
    looks = {(mcolors.to_hex(strategy_colours(names)[s]), strategy_markers(names)[s]) for s in names}
    assert len(looks) == len(names)
    assert len({strategy_markers(names)[s] for s in names}) == len(names)  # markers alone tell them apart


def test_layers_rows_sorted_by_experts_and_rerouting_marked(tmp_path):
    from skipbench.report.figures_traffic import HEATMAPS, layers_figure

    f = write_run(tmp_path / "run")
    run = load_run("tiny", f["scores"], f["throughput"], f["predictions"], f["traffic"])
    run.scores.loc[run.scores["variant"] == "top2", "strategy"] = "prune"  # a re-routing strategy
    fig = layers_figure([run], "he", 1)
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    traffic = run.traffic["he"]
    mean = traffic[traffic["layer"] >= 0].groupby("variant")["experts_per_token"].mean()
    names = [r.removesuffix(" (re-routes)") for r in rows]
    shown = [mean[n] for n in names]
    assert ax.yaxis_inverted() and shown == sorted(shown, reverse=True)
    assert "top2 (re-routes)" in rows and "top1" in rows
    assert len({ax.get_title() for ax in fig.axes if ax.get_title()}) == len(HEATMAPS)  # no repeated panel
    plt.close(fig)
