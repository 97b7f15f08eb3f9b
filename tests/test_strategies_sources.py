"""Skip rules pinned to their sources on hand cases: Huang et al.'s top-p, the router re-run
with K' = k (vLLM num_experts_per_tok), Adaptive-K, MoDES-style modulation, decode-only."""

import pytest
import torch

from skipbench.skip.routing import LayerRule, RouterSpec
from skipbench.skip.strategies import SkipRule
from test_strategies import E, G, TOPK_GROUP, dense_router, spec


def softmax_spec(e: int, k: int, norm: bool = False) -> RouterSpec:
    return RouterSpec(layer=1, n_experts=e, top_k=k, n_group=1, topk_group=1, scoring="softmax",
                      routed_scaling_factor=1.0, norm_topk_prob=norm)


def test_top_p_is_huangs_over_all_experts():
    # Huang et al. 2024, ZhenweiAn/Dynamic_MoE modeling/modeling_moe.py,
    # top_p_sampling_batched_all_sequence: softmax over ALL experts, sort, cumsum, drop
    # ranks with cumsum > p except the first; SwitchMLP weighs experts by those
    # probabilities (no renormalisation).
    probs = torch.tensor([[0.06, 0.4, 0.04, 0.25, 0.15, 0.1]])
    logits = probs.log()
    s = softmax_spec(6, 4)  # top-4 router without renormalisation (OLMoE-like)
    w, ids = probs.topk(4)  # the router's own output: experts 1, 3, 4, 5

    def run(p, sp=s, w=w, ids=ids):
        new, out, keep = LayerRule(SkipRule("top_p", p=p), sp).apply(w, ids, logits)
        return {int(i): round(float(x), 6) for i, x, k in zip(out[0], new[0], keep[0]) if k}

    assert run(0.5) == {1: 0.4, 3: 0.25}  # cumsum 0.4 <= 0.5, then 0.65 is the first > p
    assert run(0.3) == {1: 0.4}  # the first expert alone crosses p
    assert run(0.65) == {1: 0.4, 3: 0.25, 4: 0.15}  # cumsum == p is not > p: one more, as their code
    # p is over all experts, not the top-K's renormalised mass: a Mixtral-like router
    # (renormalised top-4) gives the same set and the same (probability) weights
    wn = w / w.sum(-1, keepdim=True)
    assert run(0.5, softmax_spec(6, 4, norm=True), wn) == {1: 0.4, 3: 0.25}
    # the hook carries K slots: a set larger than K keeps its K most probable experts
    assert set(run(0.95)) == {1, 3, 4, 5}
    # ten equal probabilities, p = 0.3: cumsum 0.3 is not > 0.3, so 4 experts, as their code
    ten = torch.zeros(1, 10)
    w10, ids10 = ten.softmax(-1).topk(6)
    assert int(LayerRule(SkipRule("top_p", p=0.3), softmax_spec(10, 6)).apply(w10, ids10, ten)[2].sum()) == 4
    # sigmoid router (DeepSeek-V3): probabilities = sigmoid scores / their sum over all E;
    # weights = probability times routed_scaling_factor, ranked without the selection bias
    sc = torch.tensor([[0.9, 0.1, 0.5, 0.3] + [0.05] * 12])
    sp = spec(k=4, bias=torch.linspace(0.5, -0.5, E))
    w, ids = dense_router(torch.logit(sc), sp)
    new, out, keep = LayerRule(SkipRule("top_p", p=0.5), sp).apply(w, ids, torch.logit(sc))
    total = float(sc.sum())
    got = {int(i): float(x) for i, x, k in zip(out[0], new[0], keep[0]) if k}
    assert set(got) == {0, 2}  # 0.9/2.4 = 0.375 <= 0.5, then 0.5/2.4 crosses
    assert got[0] == pytest.approx(0.9 / total * 2.5) and got[2] == pytest.approx(0.5 / total * 2.5)


def test_router_topk_is_the_router_with_fewer_slots():
    # vLLM hf_overrides num_experts_per_tok / llama.cpp expert_used_count re-run the router
    # with K' = k: transformers' DeepseekV3TopkRouter (modeling_deepseek_v3.py) ranks by
    # scores + e_score_correction_bias and normalises over the K' chosen, times the 2.5
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    torch.manual_seed(0)
    cfg = dict(hidden_size=32, n_routed_experts=E, n_group=G, topk_group=TOPK_GROUP, routed_scaling_factor=2.5,
               norm_topk_prob=True)
    full = DeepseekV3TopkRouter(DeepseekV3Config(num_experts_per_tok=4, **cfg))
    small = DeepseekV3TopkRouter(DeepseekV3Config(num_experts_per_tok=2, **cfg))
    with torch.no_grad():
        full.weight.normal_(0, 0.3)
        full.e_score_correction_bias.normal_(0, 0.1)
        small.load_state_dict(full.state_dict())
    x = torch.randn(400, 32)
    logits, w, ids = full(x)
    _, w2, ids2 = small(x)
    sp = RouterSpec(layer=1, n_experts=E, top_k=4, n_group=G, topk_group=TOPK_GROUP, scoring="sigmoid",
                    routed_scaling_factor=2.5, bias=full.e_score_correction_bias)
    new, out, keep = LayerRule(SkipRule("router_topk", k=2), sp).apply(w, ids, logits)
    assert bool((keep.sum(-1) == 2).all())
    got = torch.stack([out[i][keep[i]] for i in range(len(out))])  # [T,2]
    order_got, order_want = got.sort(-1), ids2.sort(-1)
    assert torch.equal(order_got.values, order_want.values.to(got.dtype))
    gw = torch.stack([new[i][keep[i]] for i in range(len(out))]).gather(1, order_got.indices)
    torch.testing.assert_close(gw, w2.gather(1, order_want.indices))
    # the mask of the 2 heaviest unbiased weights picks another set for some tokens
    mask_keep = LayerRule(SkipRule("topk", k=2), sp).apply(w, ids, logits)[2]
    masked = torch.stack([ids[i][mask_keep[i]] for i in range(len(ids))]).sort(-1).values
    assert 0 < int((masked != order_want.values).any(-1).sum()) < len(ids)


def test_modulated_threshold_by_hand():
    # MoDES-style globally modulated gating: keep slot i iff importance(layer) * p_i >= tau,
    # the token's top slot always kept; p over all experts (softmax router here)
    s = softmax_spec(4, 3)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.45, 0.3, 0.22, 0.03]])
    w, ids = probs.topk(3)
    rule = SkipRule("modulated", tau=0.2, layer_importance={1: 1.0, 2: 0.5})
    keep = LayerRule(rule, s).apply(w, ids, probs.log())[2]
    assert keep.tolist() == [[True, True, False], [True, True, True]]  # 0.15 < 0.2 <= 0.22
    s2 = RouterSpec(layer=2, n_experts=4, top_k=3, n_group=1, topk_group=1, scoring="softmax",
                    routed_scaling_factor=1.0, norm_topk_prob=False)
    keep = LayerRule(rule, s2).apply(w, ids, probs.log())[2]  # importance 0.5: p_i must reach 0.4
    assert keep.tolist() == [[True, False, False], [True, False, False]]
    new = LayerRule(rule, s2).apply(w, ids, probs.log())[0]
    torch.testing.assert_close(new[:, 0], w[:, 0])  # OLMoE-like router: bare probabilities, not renormalised
    with pytest.raises(ValueError, match="calibration"):
        LayerRule(SkipRule("modulated", tau=0.2), s)


def test_decode_only_leaves_prefill_rows_dense():
    w = torch.tensor([[1.0, 0.8, 0.5, 0.2], [1.2, 0.6, 0.5, 0.2]])
    ids = torch.tensor([[0, 4, 8, 12], [1, 5, 9, 13]])
    rule = SkipRule.from_config({"strategy": "topk", "k": 1, "decode_only": True})
    new, out, keep = LayerRule(rule, spec(k=4)).apply(w, ids, None, torch.tensor([False, True]))
    assert keep.tolist() == [[True] * 4, [True, False, False, False]]
    assert torch.equal(new[0], w[0]) and new[1].tolist() == pytest.approx([2.5, 0, 0, 0])  # decode row: renormalised
    assert torch.equal(LayerRule(rule, spec(k=4)).apply(w, ids, None)[2], keep[1:].expand(2, 4))  # no phase: decode
    assert SkipRule.from_config({"strategy": "topk", "k": 1, "decode_only": False}).to_json() == SkipRule("topk", k=1).to_json()
    with pytest.raises(ValueError, match="decode_only"):
        SkipRule.from_config({"strategy": "topk", "k": 1, "decode_only": "yes"})


def test_entropy_k_by_hand():
    # Adaptive-K: k = 1 + number of thresholds the normalised router entropy reaches
    s = softmax_spec(4, 3, norm=True)
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.5, 0.0, -9.0]])
    probs = logits.softmax(-1)
    h = -(probs * probs.log()).sum(-1) / torch.log(torch.tensor(4.0))  # ~0.002, 1, ~0.70
    assert h[0] < 0.3 and h[1] == pytest.approx(1.0) and 0.6 < h[2] < 0.8
    w, ids = probs.topk(3)
    w = w / w.sum(-1, keepdim=True)
    new, _, keep = LayerRule(SkipRule("entropy_k", thresholds=(0.3, 0.75)), s).apply(w, ids, logits)
    assert keep.sum(-1).tolist() == [1, 3, 2]
    assert keep[2].tolist() == [True, True, False]  # the 2 heaviest
    torch.testing.assert_close(new.sum(-1), torch.ones(3))  # renormalised like the (norm_topk_prob) router
