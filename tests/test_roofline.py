"""Roofline arithmetic against hand-computed cases and the measured H200 table (DESIGN.md section 5)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from skipbench.speed.roofline import (
    PREDICTION_SCHEMA,
    VALIDATION_SCHEMA,
    bench_roofline_ms,
    fit_kernel_calibration,
    predict,
    run_roofline,
    validate,
)
from skipbench.speed.specs import DEEPSEEK_V3_CONFIG, HardwareProfile, ModelShape, load_profile
from skipbench.speed.traffic import ALL_LAYERS, TRAFFIC_SCHEMA

DSV3 = ModelShape.from_config(DEEPSEEK_V3_CONFIG)
H200_CALIBRATED = load_profile("h200")
H200 = dataclasses.replace(H200_CALIBRATED, cost=None, costs=())  # bytes floor only: the hand-computed roofline cases


def traffic_rows(variant, batch, distinct, slots, layers=(3, 4), tokens=None, sequences=1 << 20):
    """Per-layer TRAFFIC_SCHEMA rows with the same numbers in every layer (plus the mean row)."""
    tokens = min(batch, sequences) if tokens is None else tokens
    return [dict(variant=variant, concurrency=batch, layer=layer, slots=8, steps=10, tokens_per_step=tokens,
                 distinct_sequences=sequences, c_effective=min(batch, sequences),
                 experts_per_token=slots / tokens, skip_rate=1 - slots / tokens / 8, slots_per_step=slots,
                 distinct_mean=distinct, distinct_p50=distinct, distinct_p90=distinct, bytes_per_expert=1,
                 bytes_per_step=distinct) for layer in (ALL_LAYERS, *layers)]  # fmt: skip


def test_batch_the_traces_cannot_fill_is_not_predicted():
    # 10 traced sequences: c = 16 replays at 10, so no prediction is labelled batch 16
    t = pd.DataFrame(traffic_rows("dense", 4, 20, 32, sequences=10) + traffic_rows("dense", 16, 60, 80, sequences=10))
    got = predict(t, DSV3, [H200], context_len=0)
    assert set(got["batch"]) == {4}


def test_expert_bytes_deepseek_v3():
    # 3 matrices of 2048 x 7168 FP8 bytes + one fp32 scale per 128x128 block (16 x 56 each)
    assert DSV3.expert_bytes("fp8") == 3 * 2048 * 7168 + 3 * 16 * 56 * 4 == 44_050_944
    assert DSV3.expert_bytes("bf16") == 3 * 2048 * 7168 * 2
    assert DSV3.weight_dtype == "fp8" and DSV3.n_moe_layers == 58


def test_active_bytes_match_37b_active_parameters():
    # batch 1, top-8, FP8: one decode step reads the ~37B active parameters (+ scales, bf16 head)
    t = pd.DataFrame(traffic_rows("dense", 1, 8, 8, layers=range(3, 61)))
    whole = predict(t, DSV3, [H200], context_len=0).query("layer == -1 and skip_path == 'skip_kernel'").iloc[0]
    assert 36e9 < whole["routed_bytes"] + whole["other_bytes"] < 40e9
    assert whole["routed_bytes"] == pytest.approx(58 * 8 * 44_050_944)


def test_batch1_top8_fp8_per_layer_hand_computed():
    t = pd.DataFrame(traffic_rows("dense", 1, 8, 8) + traffic_rows("top2", 1, 2, 2))
    p = predict(t, DSV3, [H200], context_len=1024, layer_overhead_ms=0.01)
    layer = p.query("variant == 'dense' and layer == 3 and skip_path == 'skip_kernel'").iloc[0]
    # 8 x 44.05 MB / 4.8 TB/s = 0.0734 ms; FLOPs 8 x 6 x 7168 x 2048 / 1979 TFLOP/s = 0.00036 ms
    assert layer["routed_ms"] == pytest.approx(8 * 44_050_944 / 4.8e12 * 1e3)
    assert layer["routed_ms"] == pytest.approx(0.0734, abs=1e-4)
    assert layer["routed_bound"] == "memory"
    assert layer["step_ms"] == pytest.approx(layer["routed_ms"] + layer["other_ms"] + 0.01)
    top2 = p.query("variant == 'top2' and layer == 3 and skip_path == 'skip_kernel'").iloc[0]
    assert top2["routed_ms"] == pytest.approx(layer["routed_ms"] / 4)
    assert top2["speedup"] > 1
    # whole model: traced mean x 58 MoE layers, overhead x 61 layers
    whole = p.query("variant == 'dense' and layer == -1 and skip_path == 'skip_kernel'").iloc[0]
    assert whole["routed_ms"] == pytest.approx(58 * layer["routed_ms"])
    assert whole["overhead_ms"] == pytest.approx(61 * 0.01)
    assert whole["tokens_per_s"] == pytest.approx(1e3 / whole["step_ms"])


def test_weight0_never_a_speedup():
    t = pd.DataFrame(traffic_rows("dense", 4, 30, 32) + traffic_rows("top2", 4, 8, 8))
    p = predict(t, DSV3, [H200], context_len=100)
    w0 = p[p["skip_path"] == "weight0"]
    assert set(w0["variant"]) == {"dense", "top2"} and (w0["speedup"] == 1.0).all()
    dense = p.query("skip_path == 'skip_kernel' and variant == 'dense'").set_index("layer")["step_ms"]
    top2_w0 = w0[w0["variant"] == "top2"].set_index("layer")["step_ms"]
    assert np.allclose(top2_w0.sort_index(), dense.sort_index())  # computes every slot: dense time


def test_compute_bound_at_huge_batch():
    t = pd.DataFrame(traffic_rows("dense", 65536, 256, 65536 * 8))
    layer = predict(t, DSV3, [H200], context_len=0).query("layer == 3 and skip_path == 'skip_kernel'").iloc[0]
    assert layer["routed_bound"] == "compute"
    assert layer["routed_ms"] == pytest.approx(65536 * 8 * 6 * 7168 * 2048 / 1979e12 * 1e3)


# DESIGN.md section 5: one H200, bf16 routed experts, copy bandwidth 4.24 TB/s.
DESIGN_TABLE = [  # batch, rule, distinct experts, torch._grouped_mm ms, floor ms
    (1, "top-8", 8, 0.89, 0.17), (1, "top-2", 2, 0.75, 0.04), (16, "top-8", 96, 3.49, 2.00),
    (128, "top-8", 243, 7.39, 5.05), (128, "top-4", 204, 6.87, 4.24), (4096, "top-8", 256, 13.1, 5.32),
    (4096, "top-2", 253, 8.87, 5.26),
]  # fmt: skip


def design_bench():
    rows = [dict(batch=b, rule=r, distinct_experts=d, ms=ms, floor=f, slots=b * int(r[-1])) for b, r, d, ms, f in DESIGN_TABLE]
    return pd.DataFrame(rows)


def test_floor_column_of_measured_h200_table():
    bench = design_bench()
    ms = bench_roofline_ms(bench, load_profile("h200-measured"), DSV3, "bf16")
    assert np.allclose(ms, bench["floor"], atol=0.006)  # the table rounds to 0.01 ms


def test_calibration_recovers_cost_terms():
    bench = design_bench()
    prof = load_profile("h200-measured")
    eb, pf = DSV3.expert_bytes("bf16"), DSV3.expert_flops
    floor = bench["distinct_experts"] * eb / prof.bandwidth * 1e3
    synthetic = bench.assign(ms=0.5 + 0.01 * bench["distinct_experts"] + floor + bench["slots"] * pf / 300e12 * 1e3)
    cal = fit_kernel_calibration(synthetic, prof, DSV3, "bf16")
    assert cal.layer_ms == pytest.approx(0.5) and cal.expert_ms == pytest.approx(0.01)
    assert cal.rate == pytest.approx(300e12) and cal.points == 7 and cal.max_abs_error < 1e-9
    # the real grouped_mm column: a launch-bound fixed cost, every term non-negative
    real = fit_kernel_calibration(bench, prof, DSV3, "bf16")
    assert 0.5 < real.layer_ms < 1.0 and real.expert_ms >= 0 and real.rate > 0
    t = pd.DataFrame(traffic_rows("dense", 1, 8, 8))
    p = predict(t, DSV3, [prof], context_len=0, weight_dtype="bf16", calibrations={prof.name: cal})
    layer = p.query("layer == 3 and skip_path == 'skip_kernel'").set_index("calibration")["routed_ms"]
    assert layer["calibrated"] == pytest.approx(0.5 + 8 * 0.01 + 8 * eb / prof.bandwidth * 1e3 + 8 * pf / 300e12 * 1e3)
    assert layer["bytes_floor"] == pytest.approx(8 * eb / prof.bandwidth * 1e3)


def test_band_h200_bf16_uses_the_bf16_fit():
    # DESIGN.md section 5: top-8 -> top-2 at batch 1 saved 15% of grouped_mm time, not 75%
    fp8, bf16 = H200_CALIBRATED.costs
    assert (fp8.dtype, fp8.points, bf16.dtype, bf16.points) == ("fp8", 20, "bf16", 40)
    assert bf16.max_abs_error < 0.15 and bf16.held_out_error > bf16.max_abs_error  # in-sample vs held out
    t = pd.DataFrame(traffic_rows("dense", 1, 8, 8, layers=range(3, 61)) + traffic_rows("top2", 1, 2, 2, layers=range(3, 61)))
    p = predict(t, DSV3, [H200_CALIBRATED], context_len=0, weight_dtype="bf16")
    band = p.query("layer == 3 and skip_path == 'skip_kernel' and variant == 'top2'").set_index("calibration")
    assert 1.0 < band.loc["calibrated", "speedup"] < 1.3 < band.loc["bytes_floor", "speedup"]
    assert "torch._grouped_mm bf16" in band.loc["calibrated", "calibration_source"]
    assert "leave-one-batch-out within 30%" in band.loc["calibrated", "calibration_source"]
    assert band.loc["bytes_floor", "calibration_source"] == ""


def test_fp8_model_uses_the_fp8_rows():
    t = pd.DataFrame(traffic_rows("dense", 1, 8, 8) + traffic_rows("top2", 1, 2, 2))
    p = predict(t, DSV3, [H200_CALIBRATED], context_len=0)  # DeepSeek-V3 ships FP8
    cal = p.query("layer == 3 and skip_path == 'skip_kernel' and calibration == 'calibrated'")
    assert cal["calibration_source"].str.contains("t_fp8_ms").all()
    fp8 = H200_CALIBRATED.costs[0]
    dense = cal.set_index("variant").loc["dense", "routed_ms"]
    assert dense == pytest.approx(fp8.routed_ms(8, 8, DSV3.expert_bytes("fp8"), DSV3.expert_flops))


def test_tensor_parallel_scales_bytes_and_keeps_the_launch_cost():
    fp8 = H200_CALIBRATED.costs[0]
    eb, pf = DSV3.expert_bytes("fp8"), DSV3.expert_flops
    t = pd.DataFrame(traffic_rows("dense", 16, 96, 128))
    p = predict(t, DSV3, [H200_CALIBRATED], context_len=0, n_devices=8)
    routed = p.query("layer == 3 and skip_path == 'skip_kernel' and calibration == 'calibrated'")["routed_ms"].iloc[0]
    per_expert = fp8.expert_ms * eb / fp8.measured_expert_bytes + eb / fp8.bandwidth * 1e3  # both scale with bytes
    scaled = (96 * per_expert + 128 * pf / fp8.rate * 1e3) / 8
    assert routed == pytest.approx(fp8.layer_ms + scaled)  # launch cost once, not / 8, not x expert size


def test_other_shape_or_dtype_is_refused_bytes_floor_only():
    # the embedded default's shape: a fit of DeepSeek-V3-sized experts says nothing about 256 x 128 experts
    tiny = ModelShape.from_config(dict(DEEPSEEK_V3_CONFIG, quantization_config=None, hidden_size=256,
                                       moe_intermediate_size=128, intermediate_size=512, num_hidden_layers=4,
                                       first_k_dense_replace=1, n_routed_experts=16, num_experts_per_tok=4,
                                       vocab_size=1024))  # fmt: skip
    t = pd.DataFrame(traffic_rows("dense", 1, 4, 4, layers=(1, 2, 3)) + traffic_rows("top1", 1, 1, 1, layers=(1, 2, 3)))
    p = predict(t, tiny, [H200_CALIBRATED], context_len=100)
    assert set(p["calibration"]) == {"bytes_floor"}
    assert p["calibration_source"].str.contains("no calibration for bf16 experts 256x128").all()
    whole = p.query("layer == -1 and variant == 'dense' and skip_path == 'skip_kernel'")["step_ms"].iloc[0]
    assert whole < 0.2  # was 2.3 ms: no 0.77 ms/layer launch cost carried to a shape it was not timed at
    fp16 = dataclasses.replace(H200_CALIBRATED, costs=H200_CALIBRATED.costs[:1])  # fp8 fit alone
    p = predict(pd.DataFrame(traffic_rows("dense", 1, 8, 8)), DSV3, [fp16], context_len=0, weight_dtype="bf16")
    assert set(p["calibration"]) == {"bytes_floor"}
    assert p["calibration_source"].str.contains("timed on fp8 weights, not bf16").all()


def test_validate_side_by_side():
    prof = HardwareProfile("cpuprof", "cpu:x86_64x2", 1e10, 1e11, 1e11, {})
    tiny = ModelShape.from_config(dict(DEEPSEEK_V3_CONFIG, quantization_config=None, num_hidden_layers=4))
    p = predict(pd.DataFrame(traffic_rows("dense", 2, 10, 16)), tiny, [prof], context_len=10)
    step = p.query("layer == -1 and skip_path == 'skip_kernel' and batch == 2")["step_ms"].iloc[0]
    measured = pd.DataFrame([dict(variant="dense", concurrency=2, device="cpu:x86_64x2", skip_path="none",
                                  tpot_median_ms=2 * step, engine="vllm", engine_version="0.32.0"),
                             dict(variant="dense", concurrency=2, device="cuda:other", skip_path="none",
                                  tpot_median_ms=1.0, engine="vllm", engine_version="0.32.0")])  # fmt: skip
    v = validate(p, throughput=measured)
    assert list(v.columns) == VALIDATION_SCHEMA.names
    assert len(v) == 1 and v["rel_error"].iloc[0] == pytest.approx(-0.5)  # other device not compared
    kernel = validate(p, {"h200-measured": design_bench()}, {"h200-measured": load_profile("h200-measured")})
    assert len(kernel) == 7 and (kernel["kind"] == "kernel").all()
    assert (kernel["rel_error"] < 0).all()  # FP8 roofline is below every measured bf16 time


def test_profile_files(tmp_path):
    for name in ("h200", "h800", "h200-measured"):
        prof = load_profile(name)
        assert prof.bandwidth > 1e12 and prof.fp8_flops >= prof.bf16_flops
        assert set(prof.sources) == {"bandwidth", "bf16_flops", "fp8_flops"}
    assert load_profile("h800").bandwidth == 3.35e12
    (tmp_path / "mine.yaml").write_text("device: X\nbandwidth: {value: 1e12}\nbf16_flops: {value: 1, source: a}\n")
    with pytest.raises(ValueError, match="bandwidth"):
        load_profile("mine", tmp_path)
    with pytest.raises(FileNotFoundError, match="known"):
        load_profile("nope", tmp_path)
    (tmp_path / "m.yaml").write_text("measure: {copy_mib: 4, matmul_n: 64, repeats: 1}\n")
    measured = load_profile("m", tmp_path)
    assert measured.name == "m" and measured.bandwidth > 0 and "measured" in measured.sources["bandwidth"]


def test_run_roofline_writes_tables(tmp_path):
    import json

    from skipbench.io import read_table, write_table

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(DEEPSEEK_V3_CONFIG))
    rows = traffic_rows("dense", 1, 8, 8) + traffic_rows("top2", 1, 2, 2)
    write_table(tmp_path / "traffic.parquet", rows, TRAFFIC_SCHEMA)
    design_bench().to_csv(tmp_path / "bench.csv", index=False)
    pred, val = run_roofline(tmp_path / "model", tmp_path / "traffic.parquet", ["h200", "h800"], 512,
                             tmp_path / "pred.parquet", tmp_path / "val.parquet",
                             kernel_bench={"h200": tmp_path / "bench.csv", "h800": tmp_path / "absent.csv"})  # fmt: skip
    p = read_table(tmp_path / "pred.parquet", PREDICTION_SCHEMA).to_pandas()
    assert (p["source"] == "predicted").all() and set(p["hardware"]) == {"h200", "h800"}
    assert set(p[p["hardware"] == "h200"]["calibration"]) == {"bytes_floor", "calibrated"}
    h200_src = set(p[(p["hardware"] == "h200") & (p["calibration"] == "calibrated")]["calibration_source"])
    assert len(h200_src) == 1 and "kernels/bench.py" in h200_src.pop()  # the bench replaces the profile's data
    assert set(p[p["hardware"] == "h800"]["calibration"]) == {"bytes_floor"}  # its bench file is absent, no data
    assert val.num_rows == 14  # 7 bench rows x (ideal, calibrated)
