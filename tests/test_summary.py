"""The summary table on hand-made Parquet tables: values, Pareto flags, Markdown, absent inputs."""

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
from report_fixtures import (FRONT_BASE_VS_EPT, FRONT_PLUS_VS_EPT, FLOOR_STRETCH, PREDICTED_H200, SWEEP, VALIDATION_ERROR,
                             scores_rows, write_run, write_scores)  # fmt: skip

from skipbench.report.summary import SUMMARY_SCHEMA, build_summary, load_run, predicted_whole_model
from skipbench.report.summary_table import markdown, write_summary


def full_run(tmp_path, name="tiny"):
    f = write_run(tmp_path / name)
    return load_run(name, f["scores"], f["throughput"], f["predictions"], f["traffic"])


def test_summary_values_at_the_deployment_batch(tmp_path):
    run = full_run(tmp_path)
    s = build_summary([run], deployment_batch=1, hardware=["h200"]).set_index("variant")
    assert list(s.columns) == [c for c in SUMMARY_SCHEMA.names if c != "variant"]
    assert s.loc["top1", "measured_speedup"] == pytest.approx(SWEEP["top1"][1] / SWEEP["dense"][1])
    assert s.loc["dense", "measured_speedup"] == pytest.approx(1.0)
    assert math.isnan(s.loc["top3", "measured_speedup"])  # not swept
    assert s.loc["top1", "measured_on"] == "vllm 0.32.0 on cpu:x86_64x2"
    assert set(s["predicted_hardware"]) == {"h200"}
    for v, speedup in PREDICTED_H200.items():
        assert s.loc[v, "predicted_speedup"] == pytest.approx(speedup)  # the calibrated end
        assert s.loc[v, "predicted_speedup_floor"] == pytest.approx(1 + (speedup - 1) * FLOOR_STRETCH)
    assert set(s["predicted_calibration"].dropna()) == {"h200 fit"}
    assert set(s["validation_hardware"]) == {"this-machine"}  # calibrated checks, not the bytes-floor ones
    assert s["validation_error"].tolist() == pytest.approx([VALIDATION_ERROR] * len(s))
    assert s.loc["dense", "distinct_experts"] == 4.0 and s.loc["top1", "distinct_experts"] == 1.0
    assert math.isnan(s.loc["top3", "distinct_experts"])  # no trace
    assert sorted(s.index[s["pareto"]]) == sorted(FRONT_PLUS_VS_EPT)  # plus tests exist: plus vs experts/token
    assert s.loc["top1", "engine"] == "vllm 0.32.0" and s.loc["top1", "infer_batch"] == 10
    # another batch and profile: the fixture's speedups shrink as 1 + (s - 1) * scale / batch
    s4 = build_summary([run], deployment_batch=4, hardware=["this-machine", "h200"]).set_index("variant")
    assert s4.loc["top1", "measured_speedup"] == pytest.approx(SWEEP["top1"][4] / SWEEP["dense"][4])
    assert s4.loc["top2", "predicted_speedup"] == pytest.approx(1 + 0.8 * 0.5 / 4)
    assert set(s4["predicted_hardware"]) == {"this-machine"}
    assert s4.loc["dense", "distinct_experts"] == 16.0


def test_uncalibrated_profile_is_a_bytes_floor_not_a_speedup(tmp_path):
    run = full_run(tmp_path)
    whole = predicted_whole_model(run.predictions)
    assert set(whole.loc[whole["hardware"] == "h200", "calibration"]) == {"calibrated"}
    assert set(whole.loc[whole["hardware"] == "h800", "calibration"]) == {"bytes_floor"}
    assert len(whole) == 3 * 5 * 2  # one row per (hardware, variant, batch)
    s = build_summary([run], deployment_batch=1, hardware=["h800"]).set_index("variant")
    assert s["predicted_speedup"].isna().all()  # never called a speedup
    assert s.loc["top1", "predicted_speedup_floor"] == pytest.approx(1 + 1.5 * FLOOR_STRETCH)
    assert set(s["predicted_calibration"].dropna()) == {"uncalibrated"}
    md = markdown(s.reset_index())
    assert "bytes floor 3.25 (uncalibrated)" in md


def test_pareto_uses_base_tests_without_plus(tmp_path):
    path = write_scores(tmp_path / "scores.parquet", scores_rows(with_plus=False))
    s = build_summary([load_run("tiny", path)], 1, []).set_index("variant")
    assert sorted(s.index[s["pareto"]]) == sorted(FRONT_BASE_VS_EPT)
    assert s["pass1_plus"].isna().all()


def replay_rows(variants=("dense", "top1"), ms=(8.0, 2.0)) -> pd.DataFrame:
    """REPLAY_SCHEMA rows as the replay stage writes them: dense and a variant at batch 1 on cpu_eager,
    and a GPU path that was not run here."""
    from skipbench.speed.replay import add_speedup

    rows = [dict(variant=v, concurrency=1, path="cpu_eager", device="cpu:x86_64x2", expert_shape="2048x1408 float32",
                 ms_per_step=t, status="measured") for v, t in zip(variants, ms)]
    rows += [dict(variant=v, concurrency=1, path="grouped_mm", device="cpu:x86_64x2", expert_shape="2048x1408 float32",
                  ms_per_step=float("nan"), status="not run: no CUDA device") for v in variants]
    return add_speedup(pd.DataFrame(rows))


def test_write_summary_parquet_and_markdown(tmp_path):
    run = full_run(tmp_path)
    run.replay = {"he": replay_rows()}
    summary = build_summary([run], 1, ["h200"])
    write_summary(summary, tmp_path / "summary.parquet", tmp_path / "summary.md")
    table = pq.read_table(tmp_path / "summary.parquet")
    assert table.schema.equals(SUMMARY_SCHEMA, check_metadata=False)
    assert table.num_rows == 6  # 5 variants + external samples
    md = (tmp_path / "summary.md").read_text()
    quality, speed = md.split("### Speed")
    assert quality.startswith("### Quality")
    q_head = next(l for l in quality.splitlines() if l.startswith("|"))
    s_head = next(l for l in speed.splitlines() if l.startswith("|"))
    # one run, one benchmark: said once in the caption, not in a column per row
    assert q_head.startswith("| variant | pass@1 base [95% CI] | pass@1 plus [95% CI] |") and "run: tiny; benchmark: he" in quality
    assert "speedup @1 (measured)" in s_head and "predicted tok/s ratio @1 (calibrated / bytes floor)" in s_head
    assert "pass@1" not in s_head and "tok/s" not in q_head
    (top1,) = [l for l in quality.splitlines() if l.startswith("| top1")]
    cells = [c.strip() for c in top1.strip("|").split("|")]
    assert cells[:5] == ["top1 *", "0.200 [0.000, 0.300]", "0.100 [0.000, 0.200]", "-0.700 (p=0.5)", "-0.700 (p=0.25)"]
    (top1,) = [l for l in speed.splitlines() if l.startswith("| top1")]
    assert [c.strip() for c in top1.strip("|").split("|")][1:6] == ["105.0", "12.0", "1.20", "4.00", "2.50 / 3.25"]  # replayed 8/2
    assert "Replayed @1: measured, routed experts, replayed on cpu:x86_64x2 cpu_eager, experts 2048x1408 float32" in md
    assert "Predicted @1: roofline model (h200), skip_kernel path" in md
    assert "median error -40%: OFF BY MORE THAN 25%" in md  # the validation error, said in words
    assert "Measured @1: throughput sweep on vllm 0.32.0 on cpu:x86_64x2" in md


def test_absent_optional_tables_leave_columns_null(tmp_path):
    f = write_run(tmp_path / "run", optional=False)
    run = load_run("tiny", f["scores"], throughput=[tmp_path / "missing.parquet"], predictions=tmp_path / "missing.parquet")
    assert run.throughput is None and run.predictions is None and run.traffic == {}
    s = build_summary([run], 1, ["h200"])
    for col in ("measured_tok_s", "measured_speedup", "predicted_speedup", "distinct_experts"):
        assert s[col].isna().all(), col
    assert s["predicted_hardware"].isna().all() and s["measured_on"].isna().all()
    md = markdown(s)
    assert "Measured @1: no throughput sweep at this batch size." in md
    assert "Predicted @1: no roofline predictions at this batch size." in md


def test_combined_runs_keep_their_order_and_own_dense(tmp_path):
    a, b = full_run(tmp_path, "model-b"), full_run(tmp_path, "model-a")
    s = build_summary([a, b], 1, ["h200"])
    assert list(dict.fromkeys(s["run"])) == ["model-b", "model-a"]  # this run first, as given
    assert s.groupby("run")["pareto"].sum().tolist() == [len(FRONT_PLUS_VS_EPT)] * 2


def test_within_ci_of_front_marks_points_the_front_does_not_beat_significantly():
    from skipbench.report.summary import within_ci_of_front

    # experts (lower better), quality with intervals: A (4, 0.9 [0.8, 1.0]) and B (1, 0.5 [0.4, 0.6]) form the
    # front; C (2, 0.45 [0.3, 0.65]) is dominated by B only, overlapping it; D (4, 0.2 [0.1, 0.3]) is
    # dominated by A (no overlap) and B (overlap): not within
    xs, ys = [4, 1, 2, 4], [0.9, 0.5, 0.45, 0.2]
    los, his = [0.8, 0.4, 0.3, 0.1], [1.0, 0.6, 0.65, 0.3]
    assert within_ci_of_front(xs, ys, los, his, x_higher_better=False) == [2]


def test_markdown_says_at_which_batch_batch_aware_quality_was_generated(tmp_path):
    s = build_summary([full_run(tmp_path)], 1, ["h200"])
    batches = "/".join(map(str, sorted(set(s["infer_batch"].dropna().astype(int)))))
    assert f"Quality generated at batch {batches} (generation.batch_size)." in markdown(s)
    s.loc[s["variant"] == "top1", ["strategy", "infer_batch"]] = ["batch_aware", 1]
    rest = "/".join(map(str, sorted(set(s.loc[s["variant"] != "top1", "infer_batch"].dropna().astype(int)))))
    assert (f"Quality generated at batch {rest} (generation.batch_size); batch_aware (OEA) variants at batch 1 "
            "(report.deployment_batch)") in markdown(s)


def test_summary_tables_drop_empty_columns_into_the_caption_and_show_fits_100_columns(tmp_path):
    from skipbench.report.summary_table import cells, columns, text_tables

    summary = build_summary([full_run(tmp_path)], 1, ["h200"])
    summary["pass1_plus"] = float("nan")  # a benchmark without plus tests
    quality = columns(summary)["Quality"]
    kept, caption = cells(summary, quality)
    assert "pass@1 plus [95% CI]" not in kept and "run" not in kept and "benchmark" not in kept
    assert caption.startswith("run: tiny; benchmark: he; no values (left out): pass@1 plus [95% CI]")
    text = text_tables(summary)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.count("top1") >= 2 and "Quality (run: tiny" in text and "Speed" in text
    two = pd.concat([summary, summary.assign(run="other")], ignore_index=True)
    assert "run" in cells(two, quality)[0]  # two runs: the column stays


def test_sandbox_none_is_marked_first_in_the_summary(tmp_path):
    from skipbench.report.summary_table import markdown

    summary = build_summary([full_run(tmp_path)], 1, ["h200"])
    assert "WARNING" not in markdown(summary.assign(sandbox="bwrap"))
    md = markdown(summary.assign(sandbox="none"))
    assert md.startswith("**WARNING: execution.sandbox was `none`**: generated code ran WITHOUT isolation")
