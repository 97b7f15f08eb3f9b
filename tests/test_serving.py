"""Serving model against published measurements, and what a calibration may transfer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skipbench.speed.costmodel import fit_cost_model, leave_one_batch_out
from skipbench.speed.published import published_table
from skipbench.speed.serving import ServingTerms, Setting, prefill_ms, tp_decode_terms, uniform_distinct
from skipbench.speed.specs import DEEPSEEK_V3_CONFIG, ModelShape, load_profile

ROOT = Path(__file__).resolve().parents[1]
DSV3 = ModelShape.from_config(DEEPSEEK_V3_CONFIG)
FP8 = load_profile("h200").costs[0]
MEASURED = load_profile("h200-measured")


def test_leave_one_batch_out_is_held_out():
    rows = pd.DataFrame(dict(batch=[1, 1, 4, 4, 16, 16], rule=["d", "k"] * 3, distinct_experts=[8, 2, 30, 8, 96, 28],
                             slots=[8, 2, 32, 8, 128, 32]))  # fmt: skip
    exact = rows.assign(ms=0.3 + 0.01 * rows["distinct_experts"])
    assert max(leave_one_batch_out(exact, "ms", 0.0, 0.0, 1e12).values()) < 1e-9
    noisy = exact.assign(ms=exact["ms"] * np.where(rows["batch"] == 16, 1.3, 1.0))  # batch 16 off the line
    held = leave_one_batch_out(noisy, "ms", 0.0, 0.0, 1e12)
    assert set(held) == {1, 4, 16}
    fit = fit_cost_model(noisy, "ms", 0.0, 0.0, 1e12, "synthetic")
    assert fit.held_out_error == max(held.values()) > fit.max_abs_error  # held-out error exceeds in-sample
    assert "leave-one-batch-out within" in fit.source


def test_tp_terms_scale_and_launch_does_not():
    terms = ServingTerms("e", 0.05, 0.01, 450e9, {})
    one = tp_decode_terms(DSV3, MEASURED, FP8, terms, Setting(1, 16, 1000, 1000, 1000), distinct=96)
    eight = tp_decode_terms(DSV3, MEASURED, FP8, terms, Setting(8, 16, 1000, 1000, 1000), distinct=96)
    assert eight["routed_ms"] == pytest.approx(one["routed_ms"] / 8)  # bytes, pairs and expert_ms: a slice's
    assert eight["launch_ms"] == one["launch_ms"] == 61 * 0.05  # per layer, not per byte nor per device
    # MLA's latent (512 + 64 bf16 per token and layer) is read whole by every TP rank; heads split its FLOPs
    assert eight["kv_ms"] == pytest.approx(61 * 16 * 1000 * 576 * 2 / MEASURED.bandwidth * 1e3)
    assert one["kv_ms"] > eight["kv_ms"]  # on one GPU the 128 heads' attention FLOPs dominate
    assert one["allreduce_ms"] == 0 < eight["allreduce_ms"]
    assert 0 < eight["weights_ms"] < one["weights_ms"] / 4  # split, but the MLA down-projections are replicated
    # the calibration's no-graph launch cost is left out of decode ...
    assert eight["routed_ms"] < DSV3.n_moe_layers * FP8.layer_ms
    # ... and paid by the eager prefill, once per MoE layer
    assert prefill_ms(DSV3, MEASURED, FP8, 8, 1) == pytest.approx(DSV3.n_moe_layers * FP8.layer_ms, rel=0.01)


def test_uniform_distinct():
    assert uniform_distinct(1, 256, 8) == pytest.approx(8)
    assert uniform_distinct(10_000, 256, 8) == pytest.approx(256)


def test_published_dense_tpot_within_25_percent():
    t = published_table()
    target = t[t["source"].str.contains("#870")]
    assert len(target) == 8  # 4 concurrencies x 2 random-range readings
    assert (target["error"].abs() <= 0.25).all(), target[["setting", "published", "predicted", "error"]]
    assert target["profile"].str.contains("calibrated: held out").all()
    fitted = t[t["profile"].str.contains("fits layer_launch_ms")]
    assert (fitted["error"].abs() < 1e-6).all()  # the one fitted reading is marked as such, never scored
    floor = t[t["metric"] == "output tok/s per node"]
    assert len(floor) == 2 and floor["profile"].str.contains("bytes floor only").all()
    assert (floor["predicted"] > floor["published"]).all()  # a floor on time: above the measured throughput


def test_published_serving_script_writes_csv(tmp_path):
    out = tmp_path / "published.csv"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "published_serving.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "leave-one-batch-out within" in run.stdout  # every calibrated fit prints its held-out error
    table = pd.read_csv(out)
    assert list(table.columns) == ["source", "setting", "metric", "published", "predicted", "error", "profile",
                                   "assumptions"]  # fmt: skip
    assert table["source"].str.contains("InferenceX").any() and table["source"].str.contains("open-infra-index").any()


@pytest.mark.parametrize("text", ["readings: 3\n", "engines: {}\nassumptions: {}\nreadings:\n- {metric: mean_tpot_ms}\n",
                                  "a: [unclosed\n", "readings:\n- {metric: bogus, id: x}\nassumptions: {}\n"])
def test_malformed_published_file_is_reported(tmp_path, text):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ValueError, match="p.yaml"):
        published_table(tmp_path / "p.yaml")


def test_write_published_schema(tmp_path):
    from skipbench.io import read_table
    from skipbench.speed.published import PUBLISHED_SCHEMA, write_published

    write_published(tmp_path / "p.parquet")
    t = read_table(tmp_path / "p.parquet", PUBLISHED_SCHEMA)
    assert t.schema.names == PUBLISHED_SCHEMA.names and t.num_rows == 18
