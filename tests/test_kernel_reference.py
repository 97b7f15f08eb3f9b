import torch

from skipbench.kernel_build import MoeShape, select_backend
from skipbench_kernels.reference import dequant_act, distinct_experts, moe_reference, quant_act_1x128


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
    shape = MoeShape.from_model_config(
        {"hidden_size": 7168, "moe_intermediate_size": 2048, "n_routed_experts": 256, "num_experts_per_tok": 8}
    )
    assert (shape.experts, shape.slots) == (8, 8)
