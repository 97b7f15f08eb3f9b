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


# Public config.json fields (the ones the roofline and adapters.routing_of read) of the
# non-DeepSeek-V3 families the presets serve, plus Qwen2-MoE (shared expert) for coverage.
QWEN3_30B_A3B = dict(  # Qwen/Qwen3-30B-A3B
    model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=48, num_experts=128, num_experts_per_tok=8,
    moe_intermediate_size=768, intermediate_size=6144, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
    vocab_size=151936, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, tie_word_embeddings=False,
    sliding_window=None, use_sliding_window=False,
)  # fmt: skip
MIXTRAL_8X7B = dict(  # mistralai/Mixtral-8x7B-v0.1 (the Instruct model has the same shape)
    model_type="mixtral", hidden_size=4096, num_hidden_layers=32, num_local_experts=8, num_experts_per_tok=2,
    intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, sliding_window=None,
    tie_word_embeddings=False,
)  # fmt: skip
OLMOE_1B_7B = dict(  # allenai/OLMoE-1B-7B-0924
    model_type="olmoe", hidden_size=2048, num_hidden_layers=16, num_experts=64, num_experts_per_tok=8,
    intermediate_size=1024, num_attention_heads=16, num_key_value_heads=16, vocab_size=50304, norm_topk_prob=False,
    tie_word_embeddings=False,
)  # fmt: skip
DEEPSEEK_V2_LITE = dict(  # deepseek-ai/DeepSeek-V2-Lite (DeepSeek-Coder-V2-Lite has the same shape)
    model_type="deepseek_v2", hidden_size=2048, num_hidden_layers=27, first_k_dense_replace=1, moe_layer_freq=1,
    n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, moe_intermediate_size=1408,
    intermediate_size=10944, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512,
    qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, vocab_size=102400, topk_method="greedy", n_group=1,
    topk_group=1, scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0, tie_word_embeddings=False,
)  # fmt: skip
QWEN15_MOE_A27B = dict(  # Qwen/Qwen1.5-MoE-A2.7B (model_type qwen2_moe; no preset)
    model_type="qwen2_moe", hidden_size=2048, num_hidden_layers=24, num_experts=60, num_experts_per_tok=4,
    moe_intermediate_size=1408, shared_expert_intermediate_size=5632, intermediate_size=5632,
    num_attention_heads=16, num_key_value_heads=16, vocab_size=151936, decoder_sparse_step=1, norm_topk_prob=False,
    tie_word_embeddings=False, sliding_window=32768, use_sliding_window=False,
)  # fmt: skip
FAMILY_CONFIGS = {"qwen3-30b-a3b": QWEN3_30B_A3B, "mixtral-8x7b": MIXTRAL_8X7B, "olmoe-1b-7b": OLMOE_1B_7B,
                  "deepseek-v2-lite": DEEPSEEK_V2_LITE, "qwen1.5-moe-a2.7b": QWEN15_MOE_A27B}  # fmt: skip


@pytest.mark.parametrize("preset", ["qwen3-30b-a3b", "mixtral-8x7b", "olmoe-1b-7b", "deepseek-v2-lite",
                                    "deepseek-coder-v2-lite"])  # fmt: skip
def test_family_fixtures_route_as_their_presets(preset):
    import yaml

    from skipbench.model.adapters import check_routing
    from skipbench.speed.specs import HARDWARE_DIR

    cfg = yaml.safe_load((HARDWARE_DIR.parent / "presets" / f"{preset}.yaml").read_text())
    check_routing(FAMILY_CONFIGS[preset.replace("coder-", "")], cfg["model"]["expected_routing"])


def test_shape_qwen3_moe_gqa():
    s = ModelShape.from_config(QWEN3_30B_A3B)
    assert (s.family, s.attention, s.weight_dtype) == ("qwen3_moe", "gqa", "bf16")
    assert (s.n_moe_layers, s.n_dense_layers, s.n_experts, s.top_k, s.shared_inter) == (48, 0, 128, 8, 0)
    assert (s.heads, s.kv_heads, s.head_dim) == (32, 4, 128)  # head_dim from config, not 2048 / 32 = 64
    assert s.expert_bytes("bf16") == 3 * 768 * 2048 * 2 == 9_437_184
    assert s.expert_flops == 6 * 2048 * 768
    # q [4096, 2048], k and v [512, 2048], o [2048, 4096]; router [128, 2048] bf16; no shared expert
    attn = 4096 * 2048 + 2 * 512 * 2048 + 2048 * 4096
    assert attn == 18_874_368
    assert s.layer_fixed(moe=True, dtype="bf16") == (2 * (attn + 128 * 2048), 2 * (attn + 128 * 2048))
    assert s.layer_fixed(moe=False, dtype="bf16")[0] == 2 * (attn + 3 * 6144 * 2048)  # an mlp_only layer
    # KV: a key and a value of 4 heads x 128 per token; QK and AV over 128 for each of 32 query heads
    assert s.kv_per_token(1) == (2 * 4 * 128 * 2, 2 * 32 * 2 * 128) == (2048, 16384)
    assert s.kv_per_token(1000) == (2_048_000, 16_384_000)


def test_shape_mixtral_gqa():
    s = ModelShape.from_config(MIXTRAL_8X7B)
    assert (s.family, s.attention, s.n_moe_layers, s.n_dense_layers, s.n_experts, s.top_k) == \
        ("mixtral", "gqa", 32, 0, 8, 2)  # fmt: skip
    assert (s.moe_inter, s.shared_inter, s.kv_heads, s.head_dim) == (14336, 0, 8, 128)  # head_dim = 4096 / 32
    assert s.expert_bytes("bf16") == 3 * 14336 * 4096 * 2 == 352_321_536
    assert s.expert_bytes("fp8") == 3 * 14336 * 4096 + 3 * 112 * 32 * 4  # 128x128 block scales
    attn = 2 * 4096 * 4096 + 2 * 1024 * 4096  # q, o [4096, 4096]; k, v [1024, 4096]
    assert s.layer_fixed(moe=True, dtype="bf16") == (2 * (attn + 8 * 4096), 2 * (attn + 8 * 4096))
    assert s.kv_per_token(1) == (2 * 8 * 128 * 2, 2 * 32 * 2 * 128) == (4096, 16384)


def test_shape_olmoe_gqa():
    s = ModelShape.from_config(OLMOE_1B_7B)
    assert (s.family, s.n_moe_layers, s.n_experts, s.top_k, s.moe_inter, s.shared_inter) == \
        ("olmoe", 16, 64, 8, 1024, 0)  # fmt: skip
    assert s.expert_bytes("bf16") == 3 * 1024 * 2048 * 2 == 12_582_912  # experts are intermediate_size wide
    assert s.layer_fixed(moe=True, dtype="bf16")[0] == 2 * (4 * 2048 * 2048 + 64 * 2048)  # MHA: 16 kv heads
    assert s.kv_per_token(1) == (2 * 16 * 128 * 2, 2 * 16 * 2 * 128) == (8192, 8192)


def test_shape_deepseek_v2_lite_mla():
    s = ModelShape.from_config(DEEPSEEK_V2_LITE)
    assert (s.family, s.attention, s.weight_dtype, s.q_lora) == ("deepseek_v2", "mla", "bf16", 0)
    assert (s.n_moe_layers, s.n_dense_layers, s.n_experts, s.top_k, s.n_shared) == (26, 1, 64, 6, 2)
    assert s.expert_bytes("bf16") == 3 * 1408 * 2048 * 2 == 17_301_504
    # q_proj [16 x 192, 2048] (no q_lora), kv_a [512 + 64, 2048], kv_b [16 x 256, 512], o [2048, 16 x 128]
    attn = 3072 * 2048 + 576 * 2048 + 4096 * 512 + 2048 * 2048
    assert attn == 13_762_560
    shared = 3 * 2 * 1408 * 2048  # 2 shared experts
    assert s.layer_fixed(moe=True, dtype="bf16")[0] == 2 * (attn + shared + 64 * 2048)
    assert s.layer_fixed(moe=False, dtype="bf16")[0] == 2 * (attn + 3 * 10944 * 2048)
    # latent + rope key per token; QK over 576, AV over 512 per head
    assert s.kv_per_token(1) == ((512 + 64) * 2, 2 * 16 * (576 + 512)) == (1152, 34816)


def test_shape_qwen2_moe_shared_expert():
    s = ModelShape.from_config(QWEN15_MOE_A27B)
    assert (s.family, s.n_moe_layers, s.n_shared, s.shared_inter, s.moe_inter) == ("qwen2_moe", 24, 1, 5632, 1408)
    attn = 4 * 2048 * 2048
    assert s.layer_fixed(moe=True, dtype="bf16")[0] == 2 * (attn + 3 * 5632 * 2048 + 60 * 2048)


def test_from_config_needs_model_type():
    with pytest.raises(ValueError, match="model_type"):
        ModelShape.from_config({k: v for k, v in DEEPSEEK_V3_CONFIG.items() if k != "model_type"})


def test_fp8_family_checkpoint():
    # an FP8 block-quantized Qwen3-MoE (e.g. Qwen/Qwen3-30B-A3B-FP8) is read as shipped
    fp8 = dict(QWEN3_30B_A3B, quantization_config=dict(quant_method="fp8", weight_block_size=[128, 128]))
    s = ModelShape.from_config(fp8)
    assert s.weight_dtype == "fp8"
    assert s.expert_bytes("fp8") == 3 * 768 * 2048 + 3 * 6 * 16 * 4


@pytest.mark.parametrize(  # published active parameters; DeepSeek's count leaves out the input embedding
    "name, active, with_embedding",
    [("qwen3-30b-a3b", 3.3e9, True), ("mixtral-8x7b", 12.9e9, True), ("olmoe-1b-7b", 1.3e9, True),
     ("deepseek-v2-lite", 2.4e9, False), ("qwen1.5-moe-a2.7b", 2.7e9, True)],
)  # fmt: skip
def test_families_predict_end_to_end(name, active, with_embedding):
    """Batch 1, every router slot kept: a decode step reads the model's active parameters."""
    shape = ModelShape.from_config(FAMILY_CONFIGS[name])
    moe_layers = range(shape.n_dense_layers, shape.n_layers)  # these fixtures' dense layers come first
    k = shape.top_k
    rows = [("dense", 1, k, k), ("top2", 1, 2, 2), ("dense", 16, 4 * k, 16 * k)]
    t = pd.DataFrame([r for args in rows for r in traffic_rows(*args, layers=moe_layers)])
    p = predict(t, shape, [H200], context_len=512, layer_overhead_ms=0.01)
    assert np.isfinite(p["step_ms"]).all() and (p["step_ms"] > 0).all()
    assert np.isfinite(p[p["skip_path"] == "skip_kernel"]["speedup"]).all()
    whole = p.query("layer == -1 and skip_path == 'skip_kernel'").set_index(["variant", "batch"])
    dense = whole.loc[("dense", 1)]
    assert dense["routed_bytes"] == pytest.approx(shape.n_moe_layers * k * shape.expert_bytes("bf16"))
    assert dense["overhead_ms"] == pytest.approx(shape.n_layers * 0.01)
    moe_b, _ = shape.layer_fixed(moe=True, dtype="bf16")
    dense_b, _ = shape.layer_fixed(moe=False, dtype="bf16")
    kv_b, _ = shape.kv_per_token(512)
    head = shape.vocab * shape.hidden * 2
    assert dense["other_bytes"] == pytest.approx(
        shape.n_moe_layers * (moe_b + kv_b) + shape.n_dense_layers * (dense_b + kv_b) + head)
    # weight bytes (no KV) / 2 bytes, + the input embedding a step does not read ~ the published active size
    weights = dense["routed_bytes"] + dense["other_bytes"] - shape.n_layers * kv_b
    assert weights / 2 + with_embedding * shape.vocab * shape.hidden == pytest.approx(active, rel=0.05)
    assert whole.loc[("top2", 1), "routed_bytes"] == pytest.approx(shape.n_moe_layers * 2 * shape.expert_bytes("bf16"))
    assert whole.loc[("top2", 1), "step_ms"] <= dense["step_ms"]
    assert whole.loc[("dense", 16), "step_ms"] > dense["step_ms"]


def test_whole_model_counts_noncontiguous_dense_layers():
    # Qwen MoE: dense layers anywhere (mlp_only_layers) and every 2nd layer MoE (decoder_sparse_step)
    cfg = dict(QWEN3_30B_A3B, mlp_only_layers=[0, 47])
    assert ModelShape.from_config(cfg).n_moe_layers == 46
    stepped = ModelShape.from_config(dict(QWEN3_30B_A3B, decoder_sparse_step=2, mlp_only_layers=[1]))
    assert (stepped.n_moe_layers, stepped.n_dense_layers) == (23, 25)  # layers 3, 5, ..., 47 are MoE
    shape = ModelShape.from_config(cfg)
    t = pd.DataFrame(traffic_rows("dense", 1, 8, 8, layers=range(1, 47)))
    p = predict(t, shape, [H200], context_len=0, layer_overhead_ms=0.01)
    whole = p.query("layer == -1 and skip_path == 'skip_kernel'").iloc[0]
    layer = p.query("layer == 1 and skip_path == 'skip_kernel'").iloc[0]
    dense_b, _ = shape.layer_fixed(moe=False, dtype="bf16")
    assert whole["routed_bytes"] == pytest.approx(46 * layer["routed_bytes"])
    assert whole["other_bytes"] == pytest.approx(46 * layer["other_bytes"] + 2 * dense_b + 151936 * 2048 * 2)
    assert whole["overhead_ms"] == pytest.approx(48 * 0.01)


def test_run_roofline_non_deepseek(tmp_path):
    import json

    from skipbench.io import read_table, write_table

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(MIXTRAL_8X7B))
    write_table(tmp_path / "traffic.parquet", traffic_rows("dense", 1, 2, 2, layers=range(32)), TRAFFIC_SCHEMA)
    run_roofline(tmp_path / "model", tmp_path / "traffic.parquet", ["h200"], 512, tmp_path / "pred.parquet",
                 tmp_path / "val.parquet")  # fmt: skip
    p = read_table(tmp_path / "pred.parquet", PREDICTION_SCHEMA).to_pandas()
    whole = p.query("layer == -1 and skip_path == 'skip_kernel'").iloc[0]
    assert (p["weight_dtype"] == "bf16").all() and whole["routed_bytes"] == pytest.approx(32 * 2 * 352_321_536)
