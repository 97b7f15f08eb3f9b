"""Skip rules: hand-computed cases from the papers' definitions, identity, monotonicity, properties."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skipbench.skip.routing import LayerRule, RouterSpec, route
from skipbench.skip.strategies import REROUTE, STRATEGIES, SkipRule

E, G, TOPK_GROUP = 16, 4, 2  # the tiny model's router: 16 experts in 4 groups, 2 groups per token


def spec(k: int = 4, layer: int = 1, scale: float = 2.5, bias=None) -> RouterSpec:
    return RouterSpec(layer=layer, n_experts=E, top_k=k, n_group=G, topk_group=TOPK_GROUP, scoring="sigmoid",
                      routed_scaling_factor=scale, bias=bias)


def dense_router(logits: torch.Tensor, s: RouterSpec):
    """DeepSeek-V3's router output (weights [T,K] incl. the scale, ids [T,K]) for logits [T,E]."""
    ids, scores, _ = route(logits, s, s.topk_group)
    return scores / scores.sum(-1, keepdim=True) * s.routed_scaling_factor, ids


def apply(rule, w, ids=None, logits=None, s=None):
    s = s or spec(k=w.shape[-1])
    ids = ids if ids is not None else torch.arange(w.shape[-1]).expand_as(w).contiguous()
    return LayerRule(rule, s).apply(w, ids, logits)


@st.composite
def routings(draw, max_t=6):
    """(logits [T,E], spec, dense weights [T,K], ids [T,K]); ties likely (rounded logits)."""
    t = draw(st.integers(1, max_t))
    k = draw(st.integers(1, 8))
    vals = draw(st.lists(st.floats(-6, 6, allow_nan=False), min_size=t * E, max_size=t * E))
    logits = torch.tensor(vals).reshape(t, E).round(decimals=draw(st.sampled_from([0, 2, 6])))
    bias = draw(st.sampled_from([None, torch.linspace(-0.05, 0.05, E)]))
    s = spec(k=k, scale=draw(st.sampled_from([1.0, 2.5])), bias=bias)
    w, ids = dense_router(logits, s)
    return logits, s, w, ids


def rules_for(k: int):
    """One rule per strategy at a drawn setting (calibration values drawn directly)."""
    r = st.sampled_from([None, False, True])
    return st.one_of(
        st.just(SkipRule("dense")),
        st.builds(lambda k_, r: SkipRule("topk", k=k_, renormalise=r), st.integers(1, k + 1), r),
        st.builds(lambda b, r: SkipRule("threshold", beta=b, renormalise=r), st.floats(0, 1), r),
        st.builds(lambda b, r: SkipRule("threshold", beta="calibrated", layer_beta={1: b}, renormalise=r), st.floats(0, 1), r),
        st.builds(lambda p, r: SkipRule("top_p", p=p, renormalise=r), st.floats(1e-3, 1), r),
        st.builds(lambda p, r: SkipRule("top_p_within_k", p=p, renormalise=r), st.floats(1e-3, 1), r),
        st.builds(lambda k_, r: SkipRule("router_topk", k=k_, renormalise=r), st.integers(1, k + 1), r),
        st.builds(lambda t, r: SkipRule("modulated", tau=t, layer_importance={1: 1.3}, renormalise=r), st.floats(0, 0.5), r),
        st.builds(lambda t, r: SkipRule("modes", tau=t, layer_importance={1: 0.4}, renormalise=r), st.floats(0, 0.5), r),
        st.builds(lambda t, r: SkipRule("entropy_k", quantiles=(0.3, 0.7), layer_thresholds={1: t}, renormalise=r),
                  st.lists(st.floats(0, 1), min_size=2, max_size=2).map(lambda x: tuple(sorted(x))), r),
        st.builds(lambda t, r: SkipRule("entropy_k", thresholds=t, renormalise=r),
                  st.lists(st.floats(0, 1), min_size=1, max_size=4, unique=True).map(lambda x: tuple(sorted(x))), r),
        st.builds(lambda g, r: SkipRule("group", topk_group=g, renormalise=r), st.integers(1, G), r),
        st.builds(lambda ls, r: SkipRule("layers", layers=ls, renormalise=r), st.sampled_from([(), (1,), (2,)]), r),
        st.builds(lambda ex, r: SkipRule("prune", fraction=0.25, criterion="reap", pruned={1: ex}, renormalise=r),
                  st.lists(st.integers(0, E - 1), max_size=16 - 8, unique=True).map(tuple), r),
        st.builds(lambda k0, r: SkipRule("batch_aware", k0=k0, renormalise=r), st.integers(1, k), r),
    )


# --- hand-computed cases ---------------------------------------------------------------


def test_naee_top2_dynamic_skipping():
    # Lu et al. 2024: top-2, skip the 2nd expert iff w2 < beta * w1. Weights carry the 2.5.
    w = torch.tensor([[1.5, 1.0], [0.5, 2.0]])  # token 0: w2/w1 = 0.67, token 1: 0.25 (slots unsorted)
    ids = torch.tensor([[3, 7], [1, 4]])
    new, out_ids, keep = apply(SkipRule("threshold", beta=0.5), w, ids)
    assert keep.tolist() == [[True, True], [False, True]] and torch.equal(out_ids, ids)
    # default = NAEE's forward, Lucky-Lance/Expert_Sparsity model/modeling_mixtral.py line 58:
    # `routing_weights /= routing_weights.sum(dim=-1, keepdim=True)` after zeroing the 2nd weight,
    # so token 1 keeps the row's full mass (1 on Mixtral, the 2.5 here)
    assert new.tolist() == [[1.5, 1.0], [0.0, 2.5]]
    new, _, _ = apply(SkipRule("threshold", beta=0.5, renormalise=False), w, ids)
    assert new.tolist() == [[1.5, 1.0], [0.0, 2.0]]  # the ablation: the skipped term only removed
    # boundary: w2 == beta * w1 is not "below", so it stays; beta = 1 keeps only the max
    assert apply(SkipRule("threshold", beta=0.5), torch.tensor([[2.0, 1.0]]))[2].tolist() == [[True, True]]
    assert apply(SkipRule("threshold", beta=1.0), w, ids)[2].tolist() == [[True, False], [False, True]]
    # calibrated: the layer's own beta (median w2/w1 from calibration) applies
    rule = SkipRule("threshold", beta="calibrated", layer_beta={1: 0.7, 2: 0.5})
    assert apply(rule, w, ids, s=spec(k=2, layer=1))[2].tolist() == [[True, False], [False, True]]  # 0.67 < 0.7
    assert apply(rule, w, ids, s=spec(k=2, layer=2))[2].tolist() == [[True, True], [False, True]]


def test_top_p_within_k_keeps_the_crossing_expert():
    # top-p within the top-K (ablation): smallest weight-ordered prefix of the K slots with
    # mass >= p. Shares 0.1, 0.5, 0.15, 0.25.
    w = torch.tensor([[0.25, 1.25, 0.375, 0.625]])
    keep = lambda p: apply(SkipRule("top_p_within_k", p=p), w)[2].tolist()[0]  # noqa: E731
    assert keep(0.5) == [False, True, False, False]  # 0.5 reached by the first expert exactly
    assert keep(0.7) == [False, True, False, True]  # 0.5 < 0.7: the 0.25 expert crosses it
    assert keep(0.75) == [False, True, False, True]  # 0.75 reached exactly, no further expert
    assert keep(0.8) == [False, True, True, True]
    assert keep(1.0) == [True, True, True, True]
    # an exact tie reached by float sums: ten weights of 0.1, p = 0.3 keeps 3 (not 4)
    ten = torch.full((1, 10), 0.1)
    assert int(LayerRule(SkipRule("top_p_within_k", p=0.3), spec(k=10)).apply(ten, torch.arange(10)[None], None)[2].sum()) == 3


def test_topk_keeps_heaviest_with_stable_ties():
    w = torch.tensor([[0.2, 0.9, 0.5, 0.9]])
    assert apply(SkipRule("topk", k=1), w)[2].tolist() == [[False, True, False, False]]
    assert apply(SkipRule("topk", k=3), w)[2].tolist() == [[False, True, True, True]]


def test_group_limited_routing_by_hand():
    # 4 groups of 4 experts, no bias: a group scores the sum of its top-2 sigmoid scores.
    # Group 0 holds the single best expert but group 1 the best pair.
    s = torch.full((1, E), 0.01)
    s[0, 0], s[0, 1] = 0.95, 0.10  # group 0: 1.05
    s[0, 4], s[0, 5], s[0, 6] = 0.60, 0.58, 0.50  # group 1: 1.18
    s[0, 8], s[0, 9] = 0.40, 0.30  # group 2: 0.70
    logits = torch.logit(s)
    sp = spec(k=2, bias=torch.zeros(E))
    w, ids = dense_router(logits, sp)  # topk_group 2: groups 0 and 1 -> experts 0 and 4
    assert sorted(ids[0].tolist()) == [0, 4]
    new, out_ids, keep = apply(SkipRule("group", topk_group=1), w, ids, logits, sp)
    assert sorted(out_ids[0].tolist()) == [4, 5] and bool(keep.all())  # only group 1 left
    # default: what DeepSeek-V3's router configured with topk_group 1 gives (transformers
    # DeepseekV3TopkRouter: topk_weights /= denominator over the new pair, times 2.5)
    want = {4: 0.60 / 1.18 * 2.5, 5: 0.58 / 1.18 * 2.5}
    assert {i: round(x, 5) for i, x in zip(out_ids[0].tolist(), new[0].tolist())} == {i: round(x, 5) for i, x in want.items()}
    # ablation renormalise false: the dense selection's normaliser (0.95 + 0.60) stays
    new, out_ids, _ = apply(SkipRule("group", topk_group=1, renormalise=False), w, ids, logits, sp)
    want = {4: 0.60 / 1.55 * 2.5, 5: 0.58 / 1.55 * 2.5}
    assert {i: round(x, 5) for i, x in zip(out_ids[0].tolist(), new[0].tolist())} == {i: round(x, 5) for i, x in want.items()}
    new, _, _ = apply(SkipRule("group", topk_group=1, renormalise=True, routed_scaling_factor=1.0), w, ids, logits, sp)
    torch.testing.assert_close(new.sum(), torch.tensor(1.0))  # the config's factor replaces the 2.5


def test_prune_reroutes_to_remaining_experts():
    s = torch.linspace(0.9, 0.1, E)[None]  # expert 0 best, 15 worst; groups 0 and 1 win
    logits = torch.logit(s)
    sp = spec(k=4)
    w, ids = dense_router(logits, sp)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3]
    rule = SkipRule("prune", fraction=0.25, criterion="frequency", pruned={1: (0, 2), 2: ()})
    new, out_ids, keep = apply(rule, w, ids, logits, sp)
    assert sorted(out_ids[0][keep[0]].tolist()) == [1, 3, 4, 5]  # next best of the allowed groups
    assert torch.equal(apply(rule, w, ids, logits, spec(k=4, layer=2))[1], ids)  # layer 2 prunes nothing


def test_layers_and_batch_aware_by_hand():
    w = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])
    ids = torch.tensor([[1, 2, 3], [2, 5, 1], [4, 5, 6]])
    s = spec(k=3)
    # OEA k0 = 1: the batch loads {1, 2, 4}; token 0 also keeps 2, token 1 also keeps 1
    _, _, keep = LayerRule(SkipRule("batch_aware", k0=1), s).apply(w, ids, None)
    assert keep.tolist() == [[True, True, False], [True, False, True], [True, False, False]]
    # each token alone: plain top-1
    alone = torch.cat([LayerRule(SkipRule("batch_aware", k0=1), s).apply(w[i:i + 1], ids[i:i + 1], None)[2] for i in range(3)])
    assert alone.tolist() == [[True, False, False]] * 3
    rule = SkipRule("layers", layers=[2])
    assert bool(LayerRule(rule, spec(k=3, layer=1)).apply(w, ids, None)[2].all())
    new, _, keep = LayerRule(rule, spec(k=3, layer=2)).apply(w, ids, None)
    assert not bool(keep.any()) and bool((new == 0).all())  # the shared expert alone remains


# --- config --------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    {"strategy": "topk", "k": 2, "beta": 0.3},  # parameter of another strategy
    {"strategy": "topk"},  # missing parameter
    {"strategy": "nope"},
    {"strategy": "threshold", "beta": 0.3, "typo": 1},
    {"k": 2},
    {"strategy": "topk", "k": 0},
    {"strategy": "topk", "k": 2.5},
    {"strategy": "threshold", "beta": 1.5},
    {"strategy": "threshold", "beta": "median"},
    {"strategy": "top_p", "p": 0.0},
    {"strategy": "top_p_within_k", "p": 1.5},
    {"strategy": "router_topk"},
    {"strategy": "entropy_k", "thresholds": []},
    {"strategy": "entropy_k", "thresholds": [0.5, 0.2]},
    {"strategy": "entropy_k", "thresholds": [0.5, 1.2]},
    {"strategy": "entropy_k", "thresholds": "0.5"},
    {"strategy": "topk", "k": 2, "thresholds": [0.5]},
    {"strategy": "dense", "renormalise": "yes"},
    {"strategy": "group"},
    {"strategy": "group", "topk_group": 0},
    {"strategy": "layers"},
    {"strategy": "layers", "layers": [1], "cheapest": 2},
    {"strategy": "prune", "fraction": 0.25},
    {"strategy": "prune", "fraction": 1.0, "criterion": "reap"},
    {"strategy": "prune", "fraction": 0.25, "criterion": "random"},
    {"strategy": "batch_aware", "k0": 0},
    {"strategy": "topk", "k": 2, "routed_scaling_factor": 0},
])
def test_bad_config_is_an_error(cfg):
    with pytest.raises(ValueError):
        SkipRule.from_config(cfg)


def test_config_round_trip_and_calibration_needs():
    cfgs = [{"strategy": "dense"}, {"strategy": "topk", "k": 2}, {"strategy": "threshold", "beta": 1},
            {"strategy": "top_p", "p": 0.9, "renormalise": True}, {"strategy": "group", "topk_group": 1},
            {"strategy": "layers", "layers": [3, 1]}, {"strategy": "batch_aware", "k0": 2, "routed_scaling_factor": 2},
            {"strategy": "prune", "fraction": 0.5, "criterion": "reap", "pruned": {"1": [3, 0]}},
            {"strategy": "threshold", "beta": "calibrated", "layer_beta": {"1": 0.5}},
            {"strategy": "entropy_k", "thresholds": [0.2, 1]}, {"strategy": "router_topk", "k": 1, "renormalise": False}]
    for cfg in cfgs:
        rule = SkipRule.from_config(cfg)
        assert SkipRule.from_config(json.loads(rule.to_json())) == rule
        assert rule.is_calibrated
    assert SkipRule.from_config({"strategy": "threshold", "beta": 1}).beta == 1.0
    assert SkipRule.from_config(cfgs[5]).layers == (1, 3)
    needs = [SkipRule("threshold", beta="calibrated"), SkipRule("layers", cheapest=2),
             SkipRule("prune", fraction=0.1, criterion="frequency")]
    for rule in needs:
        assert rule.needs_calibration and not rule.is_calibrated
        with pytest.raises(ValueError, match="calibration"):
            LayerRule(rule, spec())


# --- identity, monotonicity, properties ---------------------------------------------------


@settings(deadline=None, max_examples=60)  # CI shares 2 cores: wall-time deadlines are flaky
@given(routings())
def test_identity_settings_equal_dense_exactly(r):
    logits, s, w, ids = r
    k = w.shape[-1]
    for ren in (False, True):
        for rule in (SkipRule("dense"), SkipRule("topk", k=k, renormalise=ren),
                     SkipRule("threshold", beta=0.0, renormalise=ren), SkipRule("top_p_within_k", p=1.0, renormalise=ren),
                     SkipRule("router_topk", k=k, renormalise=ren),
                     SkipRule("group", topk_group=TOPK_GROUP, renormalise=ren), SkipRule("layers", layers=[]),
                     SkipRule("prune", fraction=0.0, criterion="reap", pruned={1: ()}, renormalise=ren),
                     SkipRule("batch_aware", k0=k, renormalise=ren)):
            new, out_ids, keep = LayerRule(rule, s).apply(w, ids, logits)
            assert torch.equal(new, w) and torch.equal(out_ids, ids) and bool(keep.all()), rule


def kept_set(out_ids, keep):
    return torch.zeros(out_ids.shape[0], E + 1, dtype=torch.bool).scatter_(1, torch.where(keep, out_ids.long(), E), True)[:, :E]


@settings(deadline=None, max_examples=60)
@given(routings(), st.data())
def test_monotone_in_strictness(r, data):
    logits, s, w, ids = r
    k = w.shape[-1]
    k1, k2 = sorted(data.draw(st.lists(st.integers(1, k), min_size=2, max_size=2)))
    b1, b2 = sorted(data.draw(st.lists(st.floats(0, 1), min_size=2, max_size=2)))
    p1, p2 = sorted(data.draw(st.lists(st.floats(1e-3, 1), min_size=2, max_size=2)))
    pairs = [(SkipRule("topk", k=k1), SkipRule("topk", k=k2)),
             (SkipRule("threshold", beta=b2), SkipRule("threshold", beta=b1)),
             (SkipRule("top_p_within_k", p=p1), SkipRule("top_p_within_k", p=p2)),
             (SkipRule("batch_aware", k0=k1), SkipRule("batch_aware", k0=k2)),
             (SkipRule("layers", layers=[1]), SkipRule("layers", layers=[2]))]
    for strict, loose in pairs:
        ks = LayerRule(strict, s).apply(w, ids, logits)[2]
        kl = LayerRule(loose, s).apply(w, ids, logits)[2]
        assert not bool((ks & ~kl).any()), (strict, loose)  # strict keeps a subset
    # re-routing: fewer groups / more experts pruned => allowed sets shrink; a token's
    # experts under the strict rule that the loose rule could also use stay chosen
    g1, g2 = sorted(data.draw(st.lists(st.integers(1, G), min_size=2, max_size=2)))
    ks = kept_set(*LayerRule(SkipRule("top_p", p=p1), s).apply(w, ids, logits)[1:])
    kl = kept_set(*LayerRule(SkipRule("top_p", p=p2), s).apply(w, ids, logits)[1:])
    assert not bool((ks & ~kl).any()), "Huang top-p: a smaller p keeps a subset"
    ks = kept_set(*LayerRule(SkipRule("router_topk", k=k1), s).apply(w, ids, logits)[1:])
    kl = kept_set(*LayerRule(SkipRule("router_topk", k=k2), s).apply(w, ids, logits)[1:])
    assert bool((ks.sum(-1) <= kl.sum(-1)).all())
    for strict, loose in [(SkipRule("group", topk_group=g1), SkipRule("group", topk_group=g2))]:
        assert bool((kept_set(*LayerRule(strict, s).apply(w, ids, logits)[1:]).sum(-1) <= k).all())
        assert bool((kept_set(*LayerRule(loose, s).apply(w, ids, logits)[1:]).sum(-1) <= k).all())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_rule_properties(data):
    logits, s, w, ids = data.draw(routings())
    rule = data.draw(rules_for(w.shape[-1]))
    if rule.strategy == "prune" and E - len(rule.pruned[1]) < s.top_k:
        return
    layer_rule = LayerRule(rule, s)
    new, out_ids, keep = layer_rule.apply(w, ids, logits)
    assert keep.dtype == torch.bool and keep.shape == w.shape and new.dtype == w.dtype and out_ids.dtype == ids.dtype
    if rule.strategy not in ("layers", "modes"):  # MoDES exempts no slot (its masked_fill), like layers
        assert bool(keep.any(-1).all()), "every token keeps at least one expert"
    assert bool((new[~keep] == 0).all())
    kept = kept_set(out_ids, keep)
    assert bool((kept.sum(-1) == keep.sum(-1)).all()), "no expert twice in a token"
    if layer_rule.renormalise:
        rows = keep.any(-1)
        torch.testing.assert_close(new.sum(-1)[rows], w.sum(-1)[rows], rtol=1e-5, atol=0)
    elif rule.strategy not in REROUTE:
        assert torch.equal(new[keep], w[keep]) and torch.equal(out_ids, ids)
    n_kept = keep.sum(-1)
    if rule.strategy == "topk":
        assert bool((n_kept == min(rule.k, w.shape[-1])).all())
        lightest_kept = w.masked_fill(~keep, float("inf")).amin(-1)
        heaviest_dropped = w.masked_fill(keep, float("-inf")).amax(-1)
        assert bool((lightest_kept >= heaviest_dropped).all())
    if rule.strategy == "threshold":
        beta = rule.layer_beta[1] if rule.beta == "calibrated" else rule.beta
        assert torch.equal(keep, w >= beta * w.amax(-1, keepdim=True))
    if rule.strategy == "top_p_within_k" and rule.p < 1:
        share = (w * keep).sum(-1) / w.sum(-1)
        assert bool((share >= rule.p * (1 - 1e-6)).all()), "kept mass reaches p"
        without_lightest = share - w.masked_fill(~keep, float("inf")).amin(-1) / w.sum(-1)
        assert bool((without_lightest[n_kept > 1] < rule.p * (1 + 1e-6)).all()), "prefix is minimal"
    if rule.strategy == "group":  # kept experts lie in at most topk_group groups
        assert bool(((kept.view(-1, G, E // G).any(-1)).sum(-1) <= rule.topk_group).all())
    if rule.strategy == "prune":
        assert not bool(kept[:, list(rule.pruned[1])].any()), "a pruned expert was routed to"
    if rule.strategy == "batch_aware":
        base = LayerRule(SkipRule("topk", k=rule.k0), s).apply(w, ids, logits)[2]
        loaded = kept_set(ids, base).any(0)  # [E] experts some token keeps in its top-k0
        assert torch.equal(keep, base | loaded[ids])
    if rule.strategy != "batch_aware":  # batched = row by row: no information flows between tokens
        rows = [LayerRule(rule, s).apply(w[i : i + 1], ids[i : i + 1], logits[i : i + 1]) for i in range(w.shape[0])]
        assert torch.equal(torch.cat([r[2] for r in rows]), keep)
        # same decisions exactly; weights up to float reduction order (re-routing rules sum rows)
        torch.testing.assert_close(torch.cat([r[0] for r in rows]), new, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_rules_trace_without_graph_breaks(name):
    # fullgraph dynamo tracing fails on .item(), data-dependent shapes or Python loops over
    # tensor values: the rules stay CUDA-graph safe.
    params = {"dense": {}, "topk": {"k": 2}, "threshold": {"beta": 0.5}, "top_p": {"p": 0.6},
              "top_p_within_k": {"p": 0.6}, "router_topk": {"k": 2}, "entropy_k": {"thresholds": (0.5, 0.9)},
              "modulated": {"tau": 0.05, "layer_importance": {1: 1.2}}, "modes": {"tau": 0.05, "layer_importance": {1: 0.3}},
              "group": {"topk_group": 1}, "layers": {"layers": [1]}, "batch_aware": {"k0": 1},
              "prune": {"fraction": 0.25, "criterion": "reap", "pruned": {1: (0, 1, 2, 3)}}}[name]
    layer_rule = LayerRule(SkipRule(name, **params), spec(bias=torch.linspace(-0.1, 0.1, E)))
    logits = torch.randn(5, E)
    w, ids = dense_router(logits, layer_rule.spec)
    torch._dynamo.reset()  # one compile cache per strategy: more strategies than the recompile limit
    compiled = torch.compile(layer_rule.apply, fullgraph=True, backend="eager")
    for got, want in zip(compiled(w, ids, logits), layer_rule.apply(w, ids, logits)):
        assert torch.equal(got, want)
