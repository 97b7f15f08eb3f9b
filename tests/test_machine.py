"""The this-machine measurement is taken once per machine and read back: a rerun of the
roofline (for an added variant, say) times nothing and predicts the same numbers."""

import json

import pytest

from skipbench.io import read_table, write_json, write_table
from skipbench.speed import cpu_moe, specs
from skipbench.speed.machine import measure_machine
from skipbench.speed.roofline import PREDICTION_SCHEMA, run_roofline
from skipbench.speed.specs import measured_profiles
from skipbench.speed.traffic import TRAFFIC_SCHEMA
from test_roofline import traffic_rows

# a small DeepSeek-V3-shaped model: the layer timing takes a moment on one CPU thread
SMALL = dict(specs.DEEPSEEK_V3_CONFIG, hidden_size=256, moe_intermediate_size=128, n_routed_experts=16,
             num_experts_per_tok=4, n_group=4, topk_group=2, num_hidden_layers=4, first_k_dense_replace=1)
PROFILE = "measure: {copy_mib: 4, matmul_n: 64, repeats: 1}\ncalibrate: {batches: [1, 4], repeats: 3}\n"


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(SMALL))
    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "here.yaml").write_text(PROFILE)
    (tmp_path / "hw" / "fixed.yaml").write_text(
        "device: x\n" + "".join(f"{k}: {{value: 1.0e12, source: test}}\n" for k in ("bandwidth", "bf16_flops", "fp8_flops")))
    write_table(tmp_path / "traffic.parquet", traffic_rows("dense", 1, 4, 4) + traffic_rows("top1", 1, 1, 1), TRAFFIC_SCHEMA)
    return tmp_path


def predict(tmp, machine):
    run_roofline(tmp / "model", tmp / "traffic.parquet", ["here"], 128, tmp / "p.parquet", tmp / "v.parquet",
                 hardware_dir=tmp / "hw", machine=machine)  # fmt: skip
    return read_table(tmp / "p.parquet", PREDICTION_SCHEMA).to_pandas()


def test_only_measured_profiles_get_a_machine_job(setup):
    assert measured_profiles(["here", "fixed", "absent"], setup / "hw") == ["here"]


def test_a_kept_measurement_is_read_back_not_timed_again(setup, monkeypatch):
    record = measure_machine("here", setup / "model", setup / "hw")
    assert record["profile"]["bandwidth"] > 0 and len(record["layer"]) == 2 * 3  # batches x (dense, top1, top2)
    write_json(setup / "here.json", record)
    first = predict(setup, {"here": setup / "here.json"})

    def never(*a, **k):
        raise AssertionError("timed again")

    monkeypatch.setattr(specs, "measure_profile", never)
    monkeypatch.setattr(cpu_moe, "bench_layer", never)
    again = predict(setup, {"here": setup / "here.json"})
    calibrated = again[again["calibration"] == "calibrated"]
    assert len(calibrated) and "timed once for this machine" in calibrated["calibration_source"].iloc[0]
    assert again["step_ms"].tolist() == first["step_ms"].tolist()
