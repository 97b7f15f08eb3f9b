"""FP8 128x128 block format and the sharded checkpoint converter."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from skipbench.model import fp8
from skipbench.model.fp8 import (
    CONVERT_REPORT_SCHEMA, QUANTIZATION_CONFIG, convert_checkpoint, dequantize_fp8_blocks, is_fp8_weight,
    quantize_fp8_blocks,
)
from skipbench.io import read_table
from skipbench.model.layout import INDEX_NAME, read_index, write_index


def reference_dequant(q: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    """DeepSeek's weight_dequant written as the plain per-block loop it computes."""
    out = torch.empty(q.shape, dtype=torch.float32)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            rows, cols = slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block)
            out[rows, cols] = q[rows, cols].float() * s[i, j]
    return out


@pytest.mark.parametrize("shape", [(128, 128), (300, 200), (576, 128), (1, 7), (129, 257)])
def test_round_trip_within_e4m3_precision(shape):
    torch.manual_seed(0)
    w = torch.randn(shape) * torch.logspace(-3, 0, shape[1])  # columns spanning 3 decades
    q, s = quantize_fp8_blocks(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert s.dtype == torch.float32 and s.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    d = dequantize_fp8_blocks(q, s, torch.float32)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normals; below the smallest
    # normal (2^-6 of the scaled range) the absolute spacing is 2^-9 block scales.
    s_full = s.repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]]
    bound = w.abs() / 16 + s_full * 2.0**-10
    assert ((d - w).abs() <= bound * 1.0001).all()
    # Each block's largest magnitude maps onto e4m3's largest finite value, exactly.
    assert torch.allclose(q.float().abs().amax(), torch.tensor(448.0))


def test_ragged_blocks_match_reference_loop():
    torch.manual_seed(1)
    w = torch.randn(300, 200)
    q, s = quantize_fp8_blocks(w)
    assert s.shape == (3, 2)
    assert torch.equal(dequantize_fp8_blocks(q, s, torch.float32), reference_dequant(q, s))
    # Edge blocks get their own scales from the ragged rows/cols only.
    assert s[2, 1].item() == pytest.approx(w[256:, 128:].abs().max().item() / 448, rel=1e-6)
    # bf16 output is the fp32 product rounded once, as weight_dequant casts at the end.
    assert torch.equal(dequantize_fp8_blocks(q, s), reference_dequant(q, s).to(torch.bfloat16))


def test_zero_block_and_nonfinite():
    w = torch.randn(256, 256)
    w[:128, 128:] = 0
    q, s = quantize_fp8_blocks(w)
    assert s[0, 1].item() == 1.0  # no 0/0
    assert torch.equal(dequantize_fp8_blocks(q, s, torch.float32)[:128, 128:], torch.zeros(128, 128))
    w[5, 5] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_fp8_blocks(w)


def test_dequant_rejects_wrong_scale_shape():
    q, s = quantize_fp8_blocks(torch.randn(256, 256))
    with pytest.raises(ValueError, match="scale_inv shape"):
        dequantize_fp8_blocks(q, s[:1])


def test_which_tensors_are_fp8_in_the_release():
    fp8_names = [
        "model.layers.0.self_attn.q_a_proj.weight", "model.layers.0.self_attn.q_b_proj.weight",
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.self_attn.kv_b_proj.weight",
        "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.down_proj.weight", "model.layers.9.mlp.experts.255.up_proj.weight",
        "model.layers.9.mlp.shared_experts.down_proj.weight",
    ]
    kept = [
        "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
        "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.kv_a_layernorm.weight",
        "model.layers.9.mlp.gate.weight", "model.layers.9.mlp.gate.e_score_correction_bias",
        "model.layers.0.self_attn.q_a_proj.weight_scale_inv",
    ]
    assert all(is_fp8_weight(n) for n in fp8_names)
    assert not any(is_fp8_weight(n) for n in kept)


# A two-shard FP8 checkpoint, built by hand so each test controls where every tensor sits.
Ckpt = namedtuple("Ckpt", "dir weights")


@pytest.fixture
def fp8_ckpt(tmp_path):
    torch.manual_seed(2)
    d = tmp_path / "fp8"
    d.mkdir()
    a = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"  # ragged: 576 x 200
    b = "model.layers.1.mlp.experts.0.gate_proj.weight"
    weights = {a: torch.randn(576, 200) * 0.02, b: torch.randn(64, 256) * 0.05}
    qa, sa = quantize_fp8_blocks(weights[a])
    qb, sb = quantize_fp8_blocks(weights[b])
    shard1 = {a: qa, "model.embed_tokens.weight": torch.randn(32, 200).bfloat16(), b: qb}
    # b's scale lives in shard 2, as some scales do in DeepSeek-V3's release.
    shard2 = {a + "_scale_inv": sa, b + "_scale_inv": sb,
              "model.layers.1.mlp.gate.e_score_correction_bias": torch.randn(8)}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    save_file(shard1, d / names[0], metadata={"format": "pt"})
    save_file(shard2, d / names[1], metadata={"format": "pt"})
    wm = {**{k: names[0] for k in shard1}, **{k: names[1] for k in shard2}}
    write_index(d, wm, sum(t.numel() * t.element_size() for t in [*shard1.values(), *shard2.values()]))
    config = {"model_type": "deepseek_v3", "torch_dtype": "bfloat16", "quantization_config": QUANTIZATION_CONFIG}
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer.json").write_text("{}")
    (d / "generation_config.json").write_text("{}")
    dequant = {a: dequantize_fp8_blocks(qa, sa), b: dequantize_fp8_blocks(qb, sb)}
    return Ckpt(d, dequant)


def test_fp8_to_bf16_with_scale_in_other_shard(fp8_ckpt, tmp_path):
    out, report_path = tmp_path / "bf16", tmp_path / "report.parquet"
    table = convert_checkpoint(fp8_ckpt.dir, out, "fp8_to_bf16", device="cpu", report_path=report_path)
    index = read_index(out)
    assert not any(k.endswith("_scale_inv") for k in index["weight_map"])
    assert set(index["weight_map"]) == {*fp8_ckpt.weights, "model.embed_tokens.weight",
                                        "model.layers.1.mlp.gate.e_score_correction_bias"}
    total = 0
    for shard in set(index["weight_map"].values()):
        with safe_open(out / shard, "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                total += t.numel() * t.element_size()
                assert index["weight_map"][k] == shard
                if k in fp8_ckpt.weights:
                    assert t.dtype == torch.bfloat16 and torch.equal(t, fp8_ckpt.weights[k])
    assert index["metadata"]["total_size"] == total
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == "bfloat16"
    assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()
    # The report: one row per source tensor except scales, read back with its schema.
    rows = {r["tensor"]: r for r in read_table(report_path, CONVERT_REPORT_SCHEMA).to_pylist()}
    assert rows == {r["tensor"]: r for r in table.to_pylist()} and len(rows) == 4
    b = rows["model.layers.1.mlp.experts.0.gate_proj.weight"]
    assert (b["action"], b["shard"], b["scale_shard"]) == ("dequantize", "model-00001-of-00002.safetensors",
                                                             "model-00002-of-00002.safetensors")
    assert b["dtype_in"] == "float8_e4m3fn" and b["dtype_out"] == "bfloat16" and b["device"] == "cpu"
    assert 0 < b["scale_min"] <= b["scale_max"] and 0 <= b["roundtrip_max_abs_err"] <= b["max_abs"] / 8
    assert rows["model.embed_tokens.weight"]["action"] == "copy"


def test_missing_scale_is_an_error_naming_the_tensor(fp8_ckpt, tmp_path):
    index = read_index(fp8_ckpt.dir)
    del index["weight_map"]["model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"]
    (fp8_ckpt.dir / INDEX_NAME).write_text(json.dumps(index))
    out = tmp_path / "bf16"
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.0\.gate_proj\.weight"):
        convert_checkpoint(fp8_ckpt.dir, out, "fp8_to_bf16", device="cpu")
    assert not out.exists() and not list(tmp_path.glob(".bf16*"))  # nothing half-written left


def test_bf16_to_fp8_and_back(fp8_ckpt, tmp_path):
    bf16, back = tmp_path / "bf16", tmp_path / "fp8_again"
    convert_checkpoint(fp8_ckpt.dir, bf16, "fp8_to_bf16", device="cpu")
    table = convert_checkpoint(bf16, back, "bf16_to_fp8", device="cpu")
    config = json.loads((back / "config.json").read_text())
    assert config["quantization_config"] == QUANTIZATION_CONFIG
    index = read_index(back)
    for name, w in fp8_ckpt.weights.items():
        shard = index["weight_map"][name]
        assert index["weight_map"][name + "_scale_inv"] == shard  # written next to the weight
        with safe_open(back / shard, "pt") as f:
            q, s = f.get_tensor(name), f.get_tensor(name + "_scale_inv")
        assert q.dtype == torch.float8_e4m3fn
        # Values that came from FP8 re-quantise to within one e4m3 step of themselves.
        assert ((dequantize_fp8_blocks(q, s, torch.float32) - w.float()).abs() <= w.float().abs() / 16 + 1e-6).all()
    assert set(table.column("action").to_pylist()) == {"quantize", "copy"}
    with pytest.raises(ValueError, match="already FP8"):
        convert_checkpoint(back, tmp_path / "twice", "bf16_to_fp8", device="cpu")


def test_free_space_checked_before_any_work(fp8_ckpt, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fp8.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 1 << 20))
    out = tmp_path / "bf16"
    with pytest.raises(OSError, match="not enough disk space"):
        convert_checkpoint(fp8_ckpt.dir, out, "fp8_to_bf16", device="cpu")
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_conversion_matches_cpu(fp8_ckpt, tmp_path):
    cpu = convert_checkpoint(fp8_ckpt.dir, tmp_path / "cpu", "fp8_to_bf16", device="cpu")
    gpu = convert_checkpoint(fp8_ckpt.dir, tmp_path / "gpu", "fp8_to_bf16", device="auto")
    assert set(gpu.column("device").to_pylist()) == {"cuda:0"}
    for shard in sorted(p.name for p in (tmp_path / "cpu").glob("*.safetensors")):
        with safe_open(tmp_path / "cpu" / shard, "pt") as a, safe_open(tmp_path / "gpu" / shard, "pt") as b:
            for k in a.keys():
                assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
    assert cpu.column("roundtrip_max_abs_err").to_pylist() == gpu.column("roundtrip_max_abs_err").to_pylist()
