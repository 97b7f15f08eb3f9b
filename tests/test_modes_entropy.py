"""MoDES as its official code (ModelTC/MoDES) and Adaptive-K with calibrated thresholds."""

import numpy as np
import pytest
import torch

from skipbench.infer.calibrate import bind_calibration
from skipbench.skip.routing import LayerRule, RouterSpec
from skipbench.skip.strategies import SkipRule
from test_strategies import dense_router, spec


def modes_reference(logits: torch.Tensor, top_k: int, importance: float, tau: float) -> torch.Tensor:
    """ModelTC/MoDES models/qwen3.py mlp_forward, written out: [T,E] weights the experts get."""
    routing_weights = torch.nn.functional.softmax(logits, dim=-1, dtype=torch.float)
    routing_weights, router_indices = torch.topk(routing_weights, top_k, dim=-1)
    routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
    router_weights = torch.zeros_like(logits).scatter_(1, router_indices, routing_weights)
    new_router_weights = router_weights.clone() * importance  # apply_scaler_scale, every row of the modality
    to_zero = new_router_weights < tau
    return router_weights.masked_fill_(to_zero, 0.0)


def per_expert(ids, weights, keep, e):
    return torch.zeros(ids.shape[0], e).scatter_add_(1, ids.long(), (weights * keep).float())


def test_modes_equals_its_official_code_on_a_qwen3_like_router():
    e, k = 16, 4
    s = RouterSpec(layer=5, n_experts=e, top_k=k, n_group=1, topk_group=1, scoring="softmax",
                   routed_scaling_factor=1.0, norm_topk_prob=True)
    logits = torch.randn(400, e, generator=torch.Generator().manual_seed(0)) * 1.5
    w, ids = logits.softmax(-1).topk(k)
    w = w / w.sum(-1, keepdim=True)  # Qwen3-MoE's router output (norm_topk_prob)
    for importance, tau in ((0.3, 0.05), (0.08, 0.01), (1.0, 0.2)):
        rule = SkipRule("modes", tau=tau, layer_importance={5: importance})
        new, out_ids, keep = LayerRule(rule, s).apply(w, ids, logits)
        want = modes_reference(logits, k, importance, tau)
        torch.testing.assert_close(per_expert(out_ids, new, keep, e), want)
        assert 0 < int(keep.sum()) < keep.numel(), (importance, tau)
    # no slot is exempt: a small enough importance drops every slot, as their masked_fill does
    rule = SkipRule("modes", tau=0.5, layer_importance={5: 0.01})
    assert not LayerRule(rule, s).apply(w, ids, logits)[2].any()


def test_modes_on_deepseek_v3_decides_on_the_renormalised_weight_and_keeps_the_scale():
    s = spec(k=4)
    logits = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    w, ids = dense_router(logits, s)  # s / sum(s) * 2.5
    rule = SkipRule("modes", tau=0.1, layer_importance={1: 0.4})
    new, out_ids, keep = LayerRule(rule, s).apply(w, ids, logits)
    assert torch.equal(keep, 0.4 * (w / 2.5) >= 0.1)  # the top-K renormalised weight, without the 2.5
    assert torch.equal(new, w * keep) and torch.equal(out_ids, ids)  # kept weights as the router gave them
    with pytest.raises(ValueError, match="layer 1"):
        LayerRule(SkipRule("modes", tau=0.1, layer_importance={2: 0.4}), s)


def calibration_rows(layers=(1, 2)):
    """A calibration table's columns that entropy_k and modes read."""
    import pyarrow as pa

    grid = np.linspace(0, 1, 101)
    rows = [dict(layer=l, modes_importance=[0.25, 0.75][i], entropy_quantiles=(0.5 + 0.4 * grid ** (1 + i)).tolist())
            for i, l in enumerate(layers)]
    return pa.Table.from_pylist(rows)


def test_entropy_k_quantiles_become_per_layer_thresholds():
    table = calibration_rows()
    rule = bind_calibration(SkipRule("entropy_k", quantiles=(0.3, 0.7)), table)
    assert rule.is_calibrated
    assert rule.layer_thresholds[1] == pytest.approx((0.5 + 0.4 * 0.3, 0.5 + 0.4 * 0.7))
    assert rule.layer_thresholds[2] == pytest.approx((0.5 + 0.4 * 0.09, 0.5 + 0.4 * 0.49))
    assert bind_calibration(SkipRule("modes", tau=0.1), table).layer_importance == {1: 0.25, 2: 0.75}
    with pytest.raises(ValueError, match="calibration"):
        LayerRule(SkipRule("entropy_k", quantiles=(0.3, 0.7)), spec())
    with pytest.raises(ValueError, match="one or the other"):
        SkipRule("entropy_k", thresholds=(0.5,), quantiles=(0.5,))


def test_calibrated_entropy_k_varies_k_per_token_on_a_flat_sigmoid_router():
    """256 experts, sigmoid: normalised entropy sits in a narrow band near 1, where fixed
    thresholds give one k for every token; thresholds at the 30th/70th percentiles of the
    calibration entropies give k = 1, 2, 3 in about 30/40/30% of held-out tokens (mean about 2)."""
    s = RouterSpec(layer=3, n_experts=256, top_k=8, n_group=8, topk_group=4, scoring="sigmoid",
                   routed_scaling_factor=2.5, bias=torch.zeros(256))
    gen = torch.Generator().manual_seed(4)
    calib, held_out = (torch.randn(n, 256, generator=gen) * 2.0 for n in (4000, 4000))
    from skipbench.skip.routing import normalised_entropy, probabilities

    h = normalised_entropy(probabilities(calib, s)).squeeze(-1).double().numpy()
    assert h.max() - h.min() < 0.1 and h.min() > 0.85  # fixed cut points at 0.85/0.9/0.95 cannot spread this
    grid = np.linspace(0, 1, 101)
    import pyarrow as pa

    table = pa.Table.from_pylist([dict(layer=3, entropy_quantiles=np.quantile(h, grid).tolist())])
    rule = bind_calibration(SkipRule("entropy_k", quantiles=(0.3, 0.7)), table)
    w, ids = dense_router(held_out, s)
    k = LayerRule(rule, s).apply(w, ids, held_out)[2].sum(-1)
    shares = [(k == j).float().mean().item() for j in (1, 2, 3)]
    assert shares == pytest.approx([0.3, 0.4, 0.3], abs=0.04) and k.float().mean().item() == pytest.approx(2.0, abs=0.05)
