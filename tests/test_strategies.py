"""Skip rules: hand-computed cases from the papers' definitions, identity, monotonicity, properties."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skipbench.strategies import STRATEGIES, SkipRule

K = 8


def router_weights(logits: torch.Tensor, scale: float = 2.5) -> torch.Tensor:
    """DeepSeek-V3 router weights from selection logits [T,K]: sigmoid, normalised, scaled."""
    s = logits.sigmoid()
    return s / s.sum(-1, keepdim=True) * scale


def ids_like(w: torch.Tensor) -> torch.Tensor:
    return torch.arange(w.shape[-1]).expand_as(w).contiguous()


@st.composite
def routings(draw, max_t=6):
    """Router weights [T,K] in shuffled slot order, with ties likely (rounded logits)."""
    t = draw(st.integers(1, max_t))
    k = draw(st.integers(1, K))
    vals = draw(st.lists(st.floats(-6, 6, allow_nan=False), min_size=t * k, max_size=t * k))
    logits = torch.tensor(vals, dtype=torch.float32).reshape(t, k).round(decimals=draw(st.sampled_from([0, 2, 6])))
    return router_weights(logits, draw(st.sampled_from([1.0, 2.5])))


def rules_for(k: int):
    """One rule per strategy at a drawn setting."""
    return st.one_of(
        st.just(SkipRule("dense")),
        st.builds(lambda k_, r: SkipRule("topk", k=k_, renormalise=r), st.integers(1, k + 1), st.booleans()),
        st.builds(lambda b, r: SkipRule("threshold", beta=b, renormalise=r), st.floats(0, 1), st.booleans()),
        st.builds(lambda p, r: SkipRule("top_p", p=p, renormalise=r), st.floats(1e-3, 1), st.booleans()),
    )


# --- hand-computed cases ---------------------------------------------------------------


def test_naee_top2_dynamic_skipping():
    # Lu et al. 2024: top-2, skip the 2nd expert iff w2 < beta * w1. Weights carry the 2.5.
    w = torch.tensor([[1.5, 1.0], [0.5, 2.0]])  # token 0: w2/w1 = 0.67, token 1: 0.25 (slots unsorted)
    ids = torch.tensor([[3, 7], [1, 4]])
    new, keep = SkipRule("threshold", beta=0.5).apply(w, ids)
    assert keep.tolist() == [[True, True], [False, True]]
    assert new.tolist() == [[1.5, 1.0], [0.0, 2.0]]  # default: no renormalisation
    new, _ = SkipRule("threshold", beta=0.5, renormalise=True).apply(w, ids)
    assert new.tolist() == [[1.5, 1.0], [0.0, 2.5]]  # token 1 keeps the full 2.5 mass
    # boundary: w2 == beta * w1 is not "below", so it stays; beta = 1 keeps only the max
    assert SkipRule("threshold", beta=0.5).apply(torch.tensor([[2.0, 1.0]]), ids)[1].tolist() == [[True, True]]
    assert SkipRule("threshold", beta=1.0).apply(w, ids)[1].tolist() == [[True, False], [False, True]]


def test_top_p_keeps_the_crossing_expert():
    # Huang et al. 2024: smallest weight-ordered prefix with mass >= p. Shares 0.1, 0.5, 0.15, 0.25.
    w = torch.tensor([[0.25, 1.25, 0.375, 0.625]])
    ids = ids_like(w)
    keep = lambda p: SkipRule("top_p", p=p).apply(w, ids)[1].tolist()[0]  # noqa: E731
    assert keep(0.5) == [False, True, False, False]  # 0.5 reached by the first expert exactly
    assert keep(0.7) == [False, True, False, True]  # 0.5 < 0.7: the 0.25 expert crosses it
    assert keep(0.75) == [False, True, False, True]  # 0.75 reached exactly, no further expert
    assert keep(0.8) == [False, True, True, True]
    assert keep(1.0) == [True, True, True, True]


def test_topk_keeps_heaviest_with_stable_ties():
    w = torch.tensor([[0.2, 0.9, 0.5, 0.9]])
    assert SkipRule("topk", k=1).apply(w, ids_like(w))[1].tolist() == [[False, True, False, False]]
    assert SkipRule("topk", k=3).apply(w, ids_like(w))[1].tolist() == [[False, True, True, True]]


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
    {"strategy": "top_p", "p": 0.0},
    {"strategy": "dense", "renormalise": "yes"},
])
def test_bad_config_is_an_error(cfg):
    with pytest.raises(ValueError):
        SkipRule.from_config(cfg)


def test_config_round_trip():
    for cfg in [{"strategy": "dense"}, {"strategy": "topk", "k": 2}, {"strategy": "threshold", "beta": 1},
                {"strategy": "top_p", "p": 0.9, "renormalise": True}]:
        rule = SkipRule.from_config(cfg)
        assert SkipRule.from_config(json.loads(rule.to_json())) == rule
    assert SkipRule.from_config({"strategy": "threshold", "beta": 1}).beta == 1.0


# --- identity, monotonicity, properties ---------------------------------------------------


@settings(deadline=None)  # CI shares 2 cores: wall-time deadlines are flaky
@given(routings())
def test_identity_settings_equal_dense_exactly(w):
    k = w.shape[-1]
    dense_w, dense_keep = SkipRule("dense").apply(w, ids_like(w))
    assert torch.equal(dense_w, w) and bool(dense_keep.all())
    for r in (False, True):
        for rule in (SkipRule("topk", k=k, renormalise=r), SkipRule("threshold", beta=0.0, renormalise=r),
                     SkipRule("top_p", p=1.0, renormalise=r)):
            new, keep = rule.apply(w, ids_like(w))
            assert torch.equal(new, w), rule
            assert bool(keep.all()), rule


@settings(deadline=None)
@given(routings(), st.data())
def test_monotone_in_strictness(w, data):
    ids = ids_like(w)
    k = w.shape[-1]
    k1, k2 = sorted(data.draw(st.lists(st.integers(1, k), min_size=2, max_size=2)))
    b1, b2 = sorted(data.draw(st.lists(st.floats(0, 1), min_size=2, max_size=2)))
    p1, p2 = sorted(data.draw(st.lists(st.floats(1e-3, 1), min_size=2, max_size=2)))
    pairs = [(SkipRule("topk", k=k1), SkipRule("topk", k=k2)),
             (SkipRule("threshold", beta=b2), SkipRule("threshold", beta=b1)),
             (SkipRule("top_p", p=p1), SkipRule("top_p", p=p2))]
    for strict, loose in pairs:
        ks, kl = strict.apply(w, ids)[1], loose.apply(w, ids)[1]
        assert not bool((ks & ~kl).any()), (strict, loose)  # strict keeps a subset


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_rule_properties(data):
    w = data.draw(routings())
    rule = data.draw(rules_for(w.shape[-1]))
    ids = ids_like(w)
    new, keep = rule.apply(w, ids)
    assert keep.dtype == torch.bool and keep.shape == w.shape and new.dtype == w.dtype
    assert bool(keep.any(-1).all()), "every token keeps at least one expert"
    assert bool((new[~keep] == 0).all())
    if rule.renormalise:
        torch.testing.assert_close(new.sum(-1), w.sum(-1), rtol=1e-5, atol=0)
    else:
        assert torch.equal(new[keep], w[keep])
    n_kept = keep.sum(-1)
    if rule.strategy == "topk":
        assert bool((n_kept == min(rule.k, w.shape[-1])).all())
        lightest_kept = w.masked_fill(~keep, float("inf")).amin(-1)
        heaviest_dropped = w.masked_fill(keep, float("-inf")).amax(-1)
        assert bool((lightest_kept >= heaviest_dropped).all())
    if rule.strategy == "threshold":
        assert torch.equal(keep, w >= rule.beta * w.amax(-1, keepdim=True))
    if rule.strategy == "top_p" and rule.p < 1:
        share = (w * keep).sum(-1) / w.sum(-1)
        assert bool((share >= rule.p * (1 - 1e-6)).all()), "kept mass reaches p"
        without_lightest = share - w.masked_fill(~keep, float("inf")).amin(-1) / w.sum(-1)
        assert bool((without_lightest[n_kept > 1] < rule.p * (1 + 1e-6)).all()), "prefix is minimal"
    # batched = row by row: no information flows between tokens
    rows = [rule.apply(w[i : i + 1], ids[i : i + 1]) for i in range(w.shape[0])]
    assert torch.equal(torch.cat([r[1] for r in rows]), keep)
    assert torch.equal(torch.cat([r[0] for r in rows]), new)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_rules_trace_without_graph_breaks(name):
    # fullgraph dynamo tracing fails on .item(), data-dependent shapes or Python loops over
    # tensor values: the rules stay CUDA-graph safe.
    rule = SkipRule(name, **{"dense": {}, "topk": {"k": 2}, "threshold": {"beta": 0.5}, "top_p": {"p": 0.6}}[name])
    w = router_weights(torch.randn(5, K))
    compiled = torch.compile(rule.apply, fullgraph=True, backend="eager")
    new, keep = compiled(w, ids_like(w))
    ref_new, ref_keep = rule.apply(w, ids_like(w))
    assert torch.equal(keep, ref_keep) and torch.equal(new, ref_new)
