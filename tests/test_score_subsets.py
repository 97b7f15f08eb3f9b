"""Per-difficulty scores of a LiveCodeBench benchmark: the score stage's statistics per subset."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lcb_fixture import write_release
from skipbench.report.summary import RunTables
from skipbench.report.summary_table import subsets_markdown
from skipbench.score.stage import VariantInputs, paired_test, pass_at_1, sample_passes
from skipbench.score.subsets import SUBSET_SCORES_SCHEMA, score_subsets, subsets_of


def _exec(path, statuses):
    rows = [dict(task_id=t, sample_id=0, split="base", status=st, dataset="livecodebench") for t, st in statuses.items()]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_scores_per_difficulty_with_paired_tests(tmp_path):
    cfg = {"dataset": "livecodebench", "path": str(write_release(tmp_path / "lcb"))}
    by, difficulty = subsets_of(cfg)
    assert by == "difficulty" and difficulty == {"abc001_a": "easy", "abc002_b": "medium", "3001": "easy",
                                                 "abc000_z": "hard"}  # fmt: skip
    assert subsets_of({"dataset": "humaneval"}) is None
    dense = _exec(tmp_path / "dense.parquet", {"abc001_a": "pass", "3001": "pass", "abc002_b": "pass", "abc000_z": "fail"})
    top1 = _exec(tmp_path / "top1.parquet", {"abc001_a": "fail", "3001": "pass", "abc002_b": "timeout", "abc000_z": "fail"})
    inputs = [VariantInputs("lcb", "dense", dense), VariantInputs("lcb", "top1", top1),
              VariantInputs("he", "dense", dense)]  # a benchmark without subsets: no rows  # fmt: skip
    out = tmp_path / "subsets.parquet"
    score_subsets(inputs, {"lcb": cfg, "he": {"dataset": "humaneval"}}, out)
    table = pq.read_table(out)
    assert table.schema == SUBSET_SCORES_SCHEMA
    rows = {(r["variant"], r["subset"]): r for r in table.to_pylist()}
    assert set(rows) == {(v, s) for v in ("dense", "top1") for s in ("easy", "hard", "medium")}
    easy = rows[("top1", "easy")]
    assert easy["tasks"] == 2 and easy["pass1"] == 0.5 and easy["subset_by"] == "difficulty"
    mine = sample_passes(pq.read_table(top1).to_pandas())["base"]
    ref = sample_passes(pq.read_table(dense).to_pandas())["base"]
    keep = [t in ("abc001_a", "3001") for t in mine.index.get_level_values("task_id")]
    assert (easy["pass1"], easy["pass1_lo"], easy["pass1_hi"], easy["tasks"]) == pytest.approx(pass_at_1(mine[keep]))
    assert (easy["paired"], easy["delta"], easy["delta_lo"], easy["delta_hi"], easy["mcnemar_p"]) == pytest.approx(
        paired_test(mine[keep], ref[keep]))
    assert easy["holm_p"] == easy["mcnemar_p"]  # one non-dense variant: Holm is the raw p
    assert rows[("dense", "easy")]["holm_p"] is None and rows[("top1", "medium")]["delta"] == -1.0
    md = subsets_markdown([RunTables("r", scores=None, subsets=table.to_pandas())])
    assert "| r | lcb | difficulty=easy | top1 | 2 | 0.500 [" in md
    assert subsets_markdown([RunTables("r", scores=None)]) == ""
