import json

import pytest
import torch

from skipbench.model.fp8 import quantize_fp8_blocks
from skipbench.io import read_table
from skipbench.model.kernel_build import KERNEL_MANIFEST_SCHEMA, MoeShape, build_kernels, model_weight_dtype, select_backend
from skipbench_kernels.reference import (
    deepseek_route,
    dequant_act,
    dequant_blocks,
    distinct_experts,
    moe_reference,
    quant_act_1x128,
    quant_blocks,
)


def _case(t=6, h=128, i=128, e=5, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g, dtype=torch.float64)
    w13 = torch.randn(e, 2 * i, h, generator=g, dtype=torch.float64) / h**0.5
    w2 = torch.randn(e, h, i, generator=g, dtype=torch.float64) / i**0.5
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    w = torch.rand(t, k, generator=g, dtype=torch.float64)
    return x, w13, w2, ids, w


def _by_hand(x, w13, w2, ids, w, keep):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for s in range(ids.shape[1]):
            if keep[t, s]:
                gate, up = (w13[ids[t, s]] @ x[t]).chunk(2)
                out[t] += w[t, s] * (w2[ids[t, s]] @ (torch.nn.functional.silu(gate) * up))
    return out


def test_moe_reference_matches_per_token_computation_under_a_skip_mask():
    x, w13, w2, ids, w = _case()
    keep = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    out = moe_reference(x, w13, w2, ids, w, keep, compute_dtype=torch.float64)
    torch.testing.assert_close(out, _by_hand(x, w13, w2, ids, w, keep))
    assert torch.all(out[2] == 0)  # a token with every slot skipped gets no routed output


def test_skipping_equals_zero_weight():
    x, w13, w2, ids, w = _case(seed=1)
    keep = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    skipped = moe_reference(x, w13, w2, ids, w, keep, compute_dtype=torch.float64)
    zeroed = moe_reference(x, w13, w2, ids, w * keep, compute_dtype=torch.float64)
    torch.testing.assert_close(skipped, zeroed)


def test_activation_quantisation_is_close_and_handles_zero_rows():
    x = torch.randn(4, 256)
    x[1] = 0
    q, s = quant_act_1x128(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (4, 2)
    back = dequant_act(q, s)
    assert torch.all(back[1] == 0)
    assert (back - x).abs().max() <= 0.07 * x.abs().max()


def test_distinct_experts_counts_kept_ids_only():
    ids = torch.tensor([[0, 3], [3, 5], [7, 0]])
    keep = torch.tensor([[1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    assert distinct_experts(ids, keep) == 2  # experts 0 and 3; 5 and 7 skipped


def test_backend_selection_without_gpu_is_the_reference_and_says_why():
    backend, reason = select_backend("auto", "cpu")
    assert backend == "reference" and "no CUDA GPU" in reason
    dsv3 = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "first_k_dense_replace": 3, "hidden_size": 7168,
            "moe_intermediate_size": 2048, "n_routed_experts": 256, "num_experts_per_tok": 8}
    shape = MoeShape.from_model_config(dsv3)
    assert (shape.hidden, shape.intermediate, shape.experts, shape.slots) == (7168, 2048, 8, 8)
    assert MoeShape.from_model_config(dsv3, tensor_parallel_size=8).intermediate == 256  # one TP8 rank
    with pytest.raises(ValueError, match="does not split"):
        MoeShape.from_model_config(dsv3, tensor_parallel_size=3)
    mixtral = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
               "num_local_experts": 8, "num_experts_per_tok": 2}
    assert MoeShape.from_model_config(mixtral, 2) == MoeShape(4096, 7168, 8, 2)


def test_backend_selection_on_gpu_depends_on_triton_and_config():
    assert select_backend("auto", "cuda", "3.9.0")[0] == "triton"
    backend, reason = select_backend("auto", "cuda", None)
    assert backend == "reference" and "Triton is not installed" in reason
    assert select_backend("reference", "cuda", "3.9.0") == ("reference", "requested in config")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        select_backend("triton", "cpu", "3.9.0")
    with pytest.raises(RuntimeError, match="not installed"):
        select_backend("triton", "cuda", None)


def test_model_weight_dtype_follows_quantization_config():
    assert model_weight_dtype({"quantization_config": {"fmt": "e4m3", "weight_block_size": [128, 128]}}) == "fp8"
    assert model_weight_dtype({}) == "bf16"


def test_build_kernels_without_gpu_writes_a_reference_manifest(tmp_path):
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 2, "first_k_dense_replace": 1, "hidden_size": 256,
           "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    build_kernels({"backend": "auto"}, tmp_path, tmp_path / "manifest.parquet")
    rows = read_table(tmp_path / "manifest.parquet", KERNEL_MANIFEST_SCHEMA).to_pylist()
    assert [r["test"].split()[0] for r in rows] == ["fp32", "bf16", "fp8"]
    assert all(r["passed"] and r["backend"] == "reference" and r["configs"] is None for r in rows)
    assert all(r["max_rel_err"] < r["tolerance"] for r in rows)


def test_batched_weight_quantisation_matches_the_checkpoint_converter():
    w = torch.randn(3, 256, 384)
    w[1, :128, :128] = 0  # an all-zero block
    q, s = quant_blocks(w)
    for e in range(3):
        q_e, s_e = quantize_fp8_blocks(w[e])
        assert torch.equal(q[e].view(torch.uint8), q_e.view(torch.uint8)) and torch.equal(s[e], s_e)
    assert (dequant_blocks(q, s) - w).abs().max() <= 0.07 * w.abs().max()


def test_deepseek_route_picks_top_k_within_the_best_groups():
    g = torch.Generator().manual_seed(0)
    x, router = torch.randn(32, 64, generator=g), torch.randn(16, 64, generator=g)
    bias = torch.randn(16, generator=g) * 0.1
    ids, w = deepseek_route(x, router, bias, top_k=4, n_group=4, topk_group=2, scale=2.5)
    torch.testing.assert_close(w.sum(-1), torch.full((32,), 2.5))
    assert torch.all(ids.sort(-1).values.diff(dim=-1) > 0)  # distinct experts per token
    assert all(len(set((row // 4).tolist())) <= 2 for row in ids)  # at most topk_group groups
    s = torch.sigmoid(x @ router.T)
    # weights use the unbiased scores
    torch.testing.assert_close(w, s.gather(1, ids) / s.gather(1, ids).sum(-1, keepdim=True) * 2.5)
    # without groups and bias it is plain top-k
    ids1, _ = deepseek_route(x, router, torch.zeros(16), top_k=4, n_group=1, topk_group=1)
    assert torch.equal(ids1.sort(-1).values, s.topk(4, -1).indices.sort(-1).values)


@pytest.mark.parametrize("cfg", [
    {"model_type": "qwen3_moe", "num_hidden_layers": 2, "hidden_size": 256, "moe_intermediate_size": 128,
     "num_experts": 8, "num_experts_per_tok": 2},
    {"model_type": "mixtral", "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 256,
     "num_local_experts": 4, "num_experts_per_tok": 2},
], ids=lambda c: c["model_type"])  # fmt: skip
def test_build_kernels_self_tests_other_families_at_their_rank_shapes(tmp_path, cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    build_kernels({"backend": "auto"}, tmp_path, tmp_path / "manifest.parquet", tensor_parallel_size=2)
    rows = read_table(tmp_path / "manifest.parquet", KERNEL_MANIFEST_SCHEMA).to_pylist()
    inter = cfg.get("moe_intermediate_size") if cfg["model_type"] == "qwen3_moe" else cfg["intermediate_size"]
    assert all(r["passed"] and json.loads(r["shape"])["intermediate"] == inter // 2 for r in rows)
    # FP8 blocks are 128 wide: a 64-wide rank shard has no FP8 form to test
    assert [r["test"].split()[0] for r in rows] == (["fp32", "bf16", "fp8"] if inter // 2 % 128 == 0 else ["fp32", "bf16"])
