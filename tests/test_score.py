"""Scoring statistics against hand-computed cases, and the score stage on small tables."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skipbench.score.stage import (
    SCORES_SCHEMA,
    VariantInputs,
    first_difference,
    mcnemar_exact,
    run_score,
    wilson,
)


def test_wilson_hand_computed():
    # k=8, n=10, z=1.96: centre (0.8 + 0.19208) / 1.38416 = 0.716738,
    # half 1.96/1.38416 * sqrt(0.016 + 0.0096040) = 0.226563 -> [0.490, 0.943]
    lo, hi = wilson(8, 10, z=1.96)
    assert lo == pytest.approx(0.49016, abs=1e-4)
    assert hi == pytest.approx(0.94330, abs=1e-4)
    # k=0: lower bound 0, upper z^2/(n+z^2) = 3.8416/13.8416 = 0.27755
    lo, hi = wilson(0, 10, z=1.96)
    assert lo == 0.0 and hi == pytest.approx(0.27755, abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_mcnemar_exact_hand_computed():
    # b=0, c=5: 2 * (1/32) = 0.0625
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    # b=1, c=6: 2 * (1 + 7) / 128 = 0.125
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    # b=2, c=8: 2 * (1 + 10 + 45) / 1024 = 0.109375
    assert mcnemar_exact(8, 2) == pytest.approx(0.109375)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2  # a prefix differs where it ends
    assert first_difference([], [5]) == 0


def _exec(path, statuses):
    """statuses: {(task, sample): (base, plus)}"""
    rows = []
    for (task, sample), (b, p) in statuses.items():
        for split, st in (("base", b), ("plus", p)):
            rows.append(dict(task_id=task, sample_id=sample, split=split, status=st, dataset="humaneval_plus",
                             dataset_version="v0.1.10", dataset_sha256="x", time_factor=4.0,
                             min_time_limit_s=1.0, sandbox="bwrap"))  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)


def _gen(path, tokens, tps, ept):
    rows = [dict(task_id=t, sample=0, completion=str(ids), token_ids=ids, tokens_generated=len(ids))
            for t, ids in tokens.items()]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path / "generations.parquet")
    pq.write_table(pa.Table.from_pylist([dict(tokens_per_s=tps, routed_per_decode_token=ept)]), path / "summary.parquet")


def test_run_score_end_to_end(tmp_path):
    tasks = [f"T/{i}" for i in range(4)]
    dense = {(t, 0): ("pass", "pass") for t in tasks}
    top1 = {("T/0", 0): ("pass", "pass"), ("T/1", 0): ("pass", "fail"), ("T/2", 0): ("fail", "pass"),
            ("T/3", 0): ("timeout", "fail")}  # fmt: skip
    for name, st in (("dense", dense), ("top1", top1)):
        (tmp_path / name).mkdir()
        _exec(tmp_path / name / "exec.parquet", st)
    _gen(tmp_path / "dense", {t: [1, 2, 3, 4] for t in tasks}, 100.0, 4.0)
    _gen(tmp_path / "top1", {"T/0": [1, 2, 3, 4], "T/1": [1, 2, 9], "T/2": [7], "T/3": [1, 2, 3, 4]}, 150.0, 1.0)
    inputs = [VariantInputs("he", v, str(tmp_path / v / "exec.parquet"), str(tmp_path / v / "generations.parquet"),
                            str(tmp_path / v / "summary.parquet")) for v in ("dense", "top1")]  # fmt: skip
    out = tmp_path / "scores.parquet"
    run_score(inputs, out)
    table = pq.read_table(out)
    assert table.schema == SCORES_SCHEMA
    rows = {r["variant"]: r for r in table.to_pylist()}
    d, t = rows["dense"], rows["top1"]
    assert d["pass1_base"] == 1.0 and d["pass1_plus"] == 1.0 and d["delta_base"] == 0.0
    assert d["identical_to_dense"] == 1.0 and d["mcnemar_p_base"] == 1.0
    # top1 base: T/0, T/1 pass -> 0.5; plus needs base too: only T/0 -> 0.25
    assert t["pass1_base"] == 0.5 and t["pass1_plus"] == 0.25
    assert (t["pass1_base_lo"], t["pass1_base_hi"]) == pytest.approx(wilson(2, 4))
    # paired with dense: base b=0, c=2 -> p = 2 * 1/4 = 0.5; plus c=3 -> 2/8 = 0.25
    assert t["delta_base"] == -0.5 and t["mcnemar_p_base"] == pytest.approx(0.5)
    assert t["delta_plus"] == -0.75 and t["mcnemar_p_plus"] == pytest.approx(0.25)
    # fidelity: T/0 and T/3 identical (4 tokens each); T/1 differs at 2, T/2 at 0: mean over all pairs
    assert t["identical_to_dense"] == 0.5 and t["first_diff_token"] == (4 + 2 + 0 + 4) / 4
    # Newcombe interval around each difference; Holm over the one non-dense variant = raw p
    assert t["delta_base_lo"] < t["delta_base"] < t["delta_base_hi"] and t["delta_base_hi"] <= 1
    assert t["holm_p_base"] == t["mcnemar_p_base"] and d["holm_p_base"] is None
    assert t["tokens_per_s"] == 150.0 and t["routed_per_decode_token"] == 1.0
    assert t["dense_experts_per_token"] is None  # optional column absent from this summary
    assert t["time_factor"] == 4.0 and t["sandbox"] == "bwrap"
    assert '"timeout": 1' in t["status_counts"]


def test_external_variant_without_generations(tmp_path):
    _exec(tmp_path / "ext.parquet", {("T/0", 0): ("pass", "pass"), ("T/0", 1): ("fail", "fail")})
    out = tmp_path / "scores.parquet"
    run_score([VariantInputs("he", "external", str(tmp_path / "ext.parquet"))], out)
    (row,) = pq.read_table(out).to_pylist()
    assert row["pass1_base"] == 0.5 and row["samples"] == 2 and row["tasks"] == 1
    assert row["tokens_per_s"] is None and row["delta_base"] is None


def test_newcombe_paired_matches_the_reference_examples():
    from skipbench.score.stats import newcombe_paired

    # Fagerland, Lydersen & Laake's examples (contingencytables R/Newcombe_square_and_add_CI_paired_2x2.R):
    # Bentur et al. 2009 (1, 1, 7, 12): -0.2857 (-0.5069 to -0.0256), psi = 0 branch
    lo, hi = newcombe_paired(1, 1, 7, 12)
    assert (lo, hi) == pytest.approx((-0.5069, -0.0256), abs=1e-4)
    # Cavo et al. 2012 (59, 6, 16, 80): -0.0621 (-0.1186 to -0.0046), psi = (A - N/2)/sqrt(...) branch
    assert newcombe_paired(59, 6, 16, 80) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    # no discordant pairs: the interval holds 0 and stays inside [-1, 1]
    lo, hi = newcombe_paired(10, 0, 0, 0)
    assert lo < 0 < hi and -1 <= lo and hi <= 1
    assert all(math.isnan(x) for x in newcombe_paired(0, 0, 0, 0))


def test_holm_hand_computed():
    from skipbench.score.stats import holm

    # m = 4 (NaN not counted): sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    got = holm([0.03, 0.5, float("nan"), 0.01, 0.02])
    assert got[0] == pytest.approx(0.06) and got[1] == pytest.approx(0.5) and math.isnan(got[2])
    assert got[3] == pytest.approx(0.04) and got[4] == pytest.approx(0.06)
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_pass_at_k_unbiased():
    from skipbench.score.stats import pass_at_k

    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(5, 4, 2) == 1.0 and pass_at_k(5, 0, 3) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_wilson_is_exact_at_the_ends():
    from skipbench.score.stage import wilson

    assert wilson(10, 10)[1] == 1.0 and wilson(0, 10)[0] == 0.0
    lo, hi = wilson(10, 10)
    assert 0.72 < lo < 0.73  # hand-computed: 10 / (10 + 1.96^2) = 0.7225
