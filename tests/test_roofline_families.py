"""The roofline on the other MoE families the presets serve: their config.json shapes,
routing, and end-to-end predictions."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from skipbench.speed.roofline import PREDICTION_SCHEMA, predict, run_roofline
from skipbench.speed.specs import DEEPSEEK_V3_CONFIG, ModelShape
from skipbench.speed.traffic import TRAFFIC_SCHEMA
from test_roofline import H200, traffic_rows


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
