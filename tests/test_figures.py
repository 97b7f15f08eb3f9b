import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skipbench.figures import draw_tradeoffs, pareto_front


def test_pareto_front_hand_computed():
    # (throughput, quality): b dominates d; a, b, c trade off; e is dominated by c.
    xs = [10, 20, 30, 15, 28]
    ys = [0.9, 0.8, 0.5, 0.7, 0.4]
    assert pareto_front(xs, ys) == [0, 1, 2]
    # Lower-is-better x (experts per token): the same points seen as costs.
    assert pareto_front(xs, ys, x_higher_better=False) == [0]
    # Ties: identical points are not dominated by each other.
    assert pareto_front([1, 1], [0.5, 0.5]) == [0, 1]


def _scores():
    rows = []
    for v, tps, ept, base in [("dense", 10.0, 4.0, 1.0), ("top2", 11.0, 2.0, 0.4), ("top1", 12.0, 1.0, 0.0)]:
        rows.append({
            "benchmark": "humaneval", "variant": v, "tokens_per_s": tps, "experts_per_token": ept,
            "pass1_base": base, "pass1_base_lo": max(0.0, base - 0.2), "pass1_base_hi": min(1.0, base + 0.2),
            "pass1_plus": None, "pass1_plus_lo": None, "pass1_plus_hi": None,
            "engine": "vllm", "device": "cpu",
        })
    return pd.DataFrame(rows)


def test_figures_are_written_and_deterministic(tmp_path):
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.Table.from_pandas(_scores()), path)
    first = draw_tradeoffs(path, tmp_path / "a", "demo")
    second = draw_tradeoffs(path, tmp_path / "b", "demo")
    assert [p.name for p in first] == ["tradeoff_humaneval.png", "tradeoff_humaneval.svg"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    assert b"Pareto front" in first[1].read_bytes()
