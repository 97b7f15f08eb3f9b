"""top_p (Huang et al.) as published is a rule over the softmax of ALL experts: refused at
planning on a sigmoid router (DeepSeek-V3-like), counted where the engines' K cap binds on a
softmax router (Mixtral-like)."""

import numpy as np
import pytest
import torch
import transformers as tf

from skipbench.config_check import ConfigError, RoutingShape, check_variants
from skipbench.infer.oracle import patch_model
from skipbench.skip.routing import LayerRule, RouterSpec, probabilities
from skipbench.skip.strategies import SkipRule

# DeepSeek-V3's published routing (config.json of deepseek-ai/DeepSeek-V3)
DSV3 = dict(model_type="deepseek_v3", n_routed_experts=256, num_experts_per_tok=8, n_group=8, topk_group=4,
            num_hidden_layers=61, first_k_dense_replace=3, scoring_func="sigmoid", topk_method="noaux_tc",
            routed_scaling_factor=2.5, norm_topk_prob=True, hidden_size=7168, moe_intermediate_size=2048,
            n_shared_experts=1)
MIXTRAL = dict(model_type="mixtral", num_local_experts=8, num_experts_per_tok=2, num_hidden_layers=32,
               hidden_size=4096)


def test_top_p_on_a_sigmoid_router_is_refused_with_its_reason():
    shape = RoutingShape.of(DSV3)
    assert shape.scoring == "sigmoid" and shape.experts == 256
    with pytest.raises(ConfigError) as err:
        check_variants({"huang": {"strategy": "top_p", "p": 0.5}}, shape)
    msg = str(err.value)
    assert "variants.huang.strategy = 'top_p': refused on a sigmoid router" in msg
    assert "not bounded by K = 8" in msg and "ZhenweiAn/Dynamic_MoE" in msg and "top_p_within_k" in msg
    # the named adaptation (p within the model's own top-K) is accepted
    check_variants({"in-k": {"strategy": "top_p_within_k", "p": 0.5}}, shape)


def test_top_p_on_a_softmax_router_is_accepted():
    shape = RoutingShape.of(MIXTRAL)
    assert shape.scoring == "softmax"
    check_variants({"huang": {"strategy": "top_p", "p": 0.5}}, shape)


def dsv3_spec(seed=0):
    g = torch.Generator().manual_seed(seed)
    return RouterSpec(layer=3, n_experts=256, top_k=8, n_group=8, topk_group=4, scoring="sigmoid",
                      routed_scaling_factor=2.5, bias=torch.randn(256, generator=g) * 0.05)


def test_why_refused_the_uncapped_set_exceeds_k_on_deepseek_v3_like_routing():
    """Router logits of DeepSeek-V3's scale (std ~2): Huang's set over all 256 is larger than
    K = 8 for nearly every token at any useful p."""
    logits = torch.randn(2000, 256, generator=torch.Generator().manual_seed(1)) * 2.0
    for p in (0.3, 0.5, 0.8):
        wanted = LayerRule(SkipRule("top_p", p=p), dsv3_spec()).uncapped(logits)
        assert (wanted > 8).float().mean() > 0.8, p


def test_uncapped_counts_match_an_independent_computation():
    """Softmax router, 8 experts top-2: wanted = smallest prefix of the sorted probabilities
    whose mass before the last expert is <= p (Huang's rule, crossing expert included)."""
    spec = RouterSpec(layer=0, n_experts=8, top_k=2, n_group=1, topk_group=1, scoring="softmax",
                      routed_scaling_factor=1.0)
    logits = torch.randn(500, 8, generator=torch.Generator().manual_seed(2))
    wanted = LayerRule(SkipRule("top_p", p=0.6), spec).uncapped(logits).numpy()
    probs = np.sort(torch.softmax(logits.double(), -1).numpy(), axis=1)[:, ::-1]
    before = np.cumsum(probs, axis=1) - probs
    assert (wanted == (before <= 0.6 + 1e-6).sum(1)).all()
    assert LayerRule(SkipRule("top_p_within_k", p=0.6), spec).uncapped(logits) is None


def test_mixtral_like_model_counts_where_the_k_cap_binds():
    """The oracle's gates on a tiny Mixtral count, per MoE layer, the tokens whose top-p set
    over all 8 experts is larger than K = 2 and the set sizes, as computed from the router's logits."""
    torch.manual_seed(0)
    cfg = tf.MixtralConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, num_local_experts=8, num_experts_per_tok=2, vocab_size=258,
                           max_position_embeddings=256, experts_implementation="eager", attn_implementation="eager")
    model = tf.MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.1)  # logits std ~1.6: some tokens fit in K = 2, some not
    gates = patch_model(model, SkipRule("top_p", p=0.7))
    seen = {}

    def keep_logits(name):
        def hook(module, args, out):
            seen[name] = out[0].detach()  # returns None: the output stays as it is
        return hook

    for name, g in gates:
        g.gate.register_forward_hook(keep_logits(name))
    with torch.no_grad():
        model(torch.randint(0, 258, (1, 40), generator=torch.Generator().manual_seed(3)))
    for name, g in gates:
        probs = probabilities(seen[name], g.layer_rule.spec).double().numpy()
        probs = np.sort(probs, axis=1)[:, ::-1]
        wanted = ((np.cumsum(probs, axis=1) - probs) <= 0.7 + 1e-6).sum(1)
        assert (g.capped, g.uncapped) == (int((wanted > 2).sum()), int(wanted.sum()))
        assert 0 < g.capped < g.tokens, "the cap binds for some tokens, not all"
