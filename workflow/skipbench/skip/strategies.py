"""Expert-skipping rules: what a variant in config means, validated, serialisable.

A SkipRule is one skip setting from config (`{strategy: topk, k: 2}`). Engines turn it
into one `routing.LayerRule` per MoE layer, which does the tensor work; this module
holds the rule's parameters, their checks, and the per-token keep functions of the
strategies that only mask the router's own choice. Shapes: T tokens, K routed slots
per token, E experts.

| strategy       | decides from                      | parameters                       | source of the rule                   |
|----------------|-----------------------------------|----------------------------------|--------------------------------------|
| dense          | nothing (unchanged routing)       |                                  |                                      |
| topk           | slot weights (mask of the top-K)  | k                                | ablation: unbiased ranking           |
| router_topk    | router re-run with K' = k         | k                                | vLLM num_experts_per_tok, llama.cpp expert_used_count |
| threshold      | slot weights (NAEE)               | beta, or "calibrated"            | Lu et al. 2024 dynamic skipping      |
| top_p          | probabilities of ALL experts      | p                                | Huang et al. 2024 (Dynamic_MoE)      |
| top_p_within_k | slot weights                      | p                                | ablation: p within the top-K         |
| entropy_k      | router entropy -> k per token     | thresholds, or quantiles (cal.)  | Adaptive-K routing (mapping: ours)   |
| modes          | layer importance x top-K weight   | tau (layer importance calibrated)| MoDES (ModelTC/MoDES code)           |
| modulated      | layer importance x probability    | tau (layer importance calibrated)| ablation: ours, MoDES-like           |
| group          | router scores (re-routes)         | topk_group                       | DeepSeek-V3 topk_group               |
| layers         | layer index                       | layers, or cheapest (n)          |                                      |
| prune          | router scores (re-routes)         | fraction, criterion              | NAEE pruning / REAP                  |
| batch_aware    | slot weights + the whole batch    | k0                               | OEA                                  |

Phase: `decode_only: true` (any strategy) applies the rule to decode rows only and leaves
prefill rows dense (the engines tell the router which rows are which): skipping where
decode is memory-bound, prompt processing untouched.

Weights (routing.LayerRule has the per-strategy defaults and their source lines):
- renormalise (default null = the strategy's source: NAEE renormalises, Huang's top-p
  and MoDES do not, every other strategy weighs the kept set as the model's own router would,
  i.e. renormalised iff the router has norm_topk_prob). true / false are ablations:
  true rescales each token's kept weights to the dense row's total (routed_scaling_
  factor included), false keeps the dense row's normaliser (a skipped expert only
  removes its own term).
- routed_scaling_factor (default null = the model's, 2.5 on DeepSeek-V3): a number
  replaces the model's factor; kept weights are multiplied by new / model's. Every
  decision is invariant to a per-token positive scale, so the factor never changes
  which experts run, only how much their sum counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch

CALIBRATED = "calibrated"  # threshold beta taken per layer from the calibration table
CRITERIA = ("frequency", "reap")  # prune: what ranks experts (lowest are removed)
REROUTE = ("group", "prune", "router_topk", "top_p")  # strategies that re-run the router on its logits


def _rank(w: torch.Tensor) -> torch.Tensor:
    """Rank of each slot by weight, 0 = heaviest; ties go to the lower slot. [T,K] int64."""
    order = torch.sort(w, dim=-1, descending=True, stable=True).indices  # [T,K] slot at rank r
    return torch.argsort(order, dim=-1)  # [T,K] rank of slot j


def keep_topk(k: int, w: torch.Tensor) -> torch.Tensor:
    """Keep the k highest-weight slots (k >= K keeps all)."""
    return _rank(w) < k


def keep_threshold(beta: float, w: torch.Tensor) -> torch.Tensor:
    """NAEE dynamic skipping generalised to K > 2: drop slot i if w_i < beta * w_max."""
    return w >= beta * w.amax(dim=-1, keepdim=True)


def keep_top_p_within_k(p: float, w: torch.Tensor) -> torch.Tensor:
    """Smallest weight-ordered prefix of the K slots whose share of the row's mass reaches p
    (top-p within the model's top-K: not Huang et al.'s rule, see routing.keep_huang_top_p).

    A slot is kept iff the mass of the strictly heavier slots is still below p, which
    keeps the slot that crosses p. A prefix that reaches p exactly counts as reaching it:
    the comparison is in float64 with 1e-6 of the row's mass given to the tie (ten
    weights of 0.1 at p = 0.3 keep 3, not 4). p = 1 keeps every slot.
    """
    sorted_w, order = torch.sort(w, dim=-1, descending=True, stable=True)  # [T,K]
    sorted_d = sorted_w.double()
    before = torch.cumsum(sorted_d, dim=-1) - sorted_d  # [T,K] mass ahead of rank r
    total = sorted_d.sum(dim=-1, keepdim=True)  # [T,1]
    keep_sorted = (before < (p - 1e-6) * total) | (p >= 1.0)
    return torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)


def keep_modes(importance: float, tau: float, w: torch.Tensor) -> torch.Tensor:
    """MoDES globally modulated gating: skip slot i iff importance(layer) * w_i / sum_j w_j < tau,
    w the router's top-K weights (their top-K renormalised softmax weight; any per-token scale such
    as routed_scaling_factor cancels). As ModelTC/MoDES models/qwen3.py mlp_forward (lines
    128-133: softmax, top-K, renormalised; lines 154-167: apply_scaler_scale multiplies by the
    layer importance, `to_zero = ... new_router_weights < tau`, masked_fill 0): no slot is
    exempt, a token may keep none."""
    return importance * (w.float() / w.float().sum(-1, keepdim=True).clamp_min(1e-30)) >= tau


def keep_batch_aware(k0: int, w: torch.Tensor, ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """OEA: a token keeps its k0 heaviest slots, and any other slot of its own top-K
    whose expert some token of the same batch already keeps among ITS k0 (loaded anyway).

    Couples the tokens of one router call: the batch is whatever the engine runs in
    that forward step (decode tokens, plus prefill chunks when they share the step).
    """
    base = _rank(w) < k0  # [T,K] phase 1: per-token baseline
    loaded = torch.zeros(n_experts + 1, dtype=torch.bool, device=ids.device)  # [E+1], E = discard bin
    loaded.scatter_(0, torch.where(base, ids.long(), n_experts).flatten(), True)
    return base | loaded[ids.long()]  # [T,K] phase 2: piggyback on loaded experts


@dataclass(frozen=True)
class _Strategy:
    params: tuple[str, ...]  # required config keys besides `strategy` (alternatives: "a|b")
    summary: str


STRATEGIES: dict[str, _Strategy] = {
    "dense": _Strategy((), "unchanged routing"),
    "topk": _Strategy(("k",), "keep the k heaviest slots of the router's top-K (unbiased weights)"),
    "router_topk": _Strategy(("k",), "the router re-run with K' = k (biased selection score)"),
    "threshold": _Strategy(("beta",), "drop slot i if w_i < beta * w_max"),
    "top_p": _Strategy(("p",), "Huang et al.: most probable experts of all E until their mass crosses p"),
    "top_p_within_k": _Strategy(("p",), "keep the smallest weight-ordered prefix of the top-K with mass >= p"),
    "entropy_k": _Strategy(("thresholds|quantiles",), "k = 1 + thresholds reached by the router's normalised entropy"),
    "modes": _Strategy(("tau",), "MoDES: drop slot i if KL importance(layer) * top-K weight_i < tau"),
    "modulated": _Strategy(("tau",), "ablation (ours): drop slot i if update importance(layer) * probability_i < tau"),
    "group": _Strategy(("topk_group",), "DeepSeek group-limited routing with fewer groups"),
    "layers": _Strategy(("layers|cheapest",), "no routed experts in chosen layers (shared stays)"),
    "prune": _Strategy(("fraction", "criterion"), "remove experts offline, re-route to the rest"),
    "batch_aware": _Strategy(("k0",), "top-k0 per token plus experts the batch loads anyway (OEA)"),
}
_PARAMS = ("k", "beta", "p", "thresholds", "quantiles", "tau", "topk_group", "layers", "cheapest", "fraction", "criterion", "k0")
_CALIBRATION = ("layer_beta", "pruned", "layer_importance", "layer_thresholds")  # filled by calibrate.bind_calibration, never by hand


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class SkipRule:
    """One skip setting, e.g. SkipRule("topk", k=2). Build it from config with from_config."""

    strategy: str = "dense"
    k: int | None = None  # topk: slots kept per token
    beta: float | str | None = None  # threshold: fraction of the token's largest weight, or "calibrated"
    p: float | None = None  # top_p: share of the probability over all E; top_p_within_k: of the top-K mass
    thresholds: tuple[float, ...] | None = None  # entropy_k: increasing normalised-entropy cut points in [0, 1]
    quantiles: tuple[float, ...] | None = None  # entropy_k: cut points = these quantiles of each layer's calibration entropy
    tau: float | None = None  # modes / modulated: global threshold on importance(layer) * weight or probability
    topk_group: int | None = None  # group: expert groups a token may use (DeepSeek-V3: 4 of 8)
    layers: tuple[int, ...] | None = None  # layers: model layer indices without routed experts
    cheapest: int | None = None  # layers: that many layers, least routed contribution in calibration
    fraction: float | None = None  # prune: share of each layer's experts removed
    criterion: str | None = None  # prune: "frequency" or "reap" (saliency), lowest removed
    k0: int | None = None  # batch_aware: slots a token always keeps
    renormalise: bool | None = None  # None: the strategy's source (routing.LayerRule)
    decode_only: bool | None = None  # true: prefill rows stay dense, the rule applies to decode rows only
    routed_scaling_factor: float | None = None  # None: the model's
    # from the calibration table (calibrate.bind_calibration):
    layer_beta: dict[int, float] | None = None  # threshold "calibrated": layer -> median w2/w1
    pruned: dict[int, tuple[int, ...]] | None = None  # prune: layer -> removed expert ids
    layer_importance: dict[int, float] | None = None  # modes: KL importance (sum 1); modulated: update (mean 1)
    layer_thresholds: dict[int, tuple[float, ...]] | None = None  # entropy_k quantiles: layer -> entropy cut points

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown skip strategy {self.strategy!r}; known: {sorted(STRATEGIES)}")
        needed = STRATEGIES[self.strategy].params
        allowed = {name for spec in needed for name in spec.split("|")}
        for name in _PARAMS:
            if getattr(self, name) is not None and name not in allowed:
                raise ValueError(f"strategy {self.strategy!r} does not take parameter {name!r}")
        for spec in needed:
            if not any(getattr(self, name) is not None for name in spec.split("|")):
                raise ValueError(f"strategy {self.strategy!r} needs parameter {spec.replace('|', ' or ')!r}")
        self._check_values()
        if self.decode_only is False:  # the default, spelled out: one JSON form per rule
            object.__setattr__(self, "decode_only", None)
        # JSON has string keys and lists: normalise so equality and hashing of to_json hold
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted(int(x) for x in self.layers)))
        for name in ("thresholds", "quantiles"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if self.layer_thresholds is not None:
            object.__setattr__(self, "layer_thresholds",
                               {int(l): tuple(float(x) for x in ts) for l, ts in self.layer_thresholds.items()})
        for name in ("layer_beta", "layer_importance"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, {int(l): float(b) for l, b in getattr(self, name).items()})
        if self.pruned is not None:
            object.__setattr__(self, "pruned", {int(l): tuple(sorted(int(e) for e in ids)) for l, ids in self.pruned.items()})

    def _check_values(self) -> None:
        def bad(name, want):
            raise ValueError(f"{self.strategy} {name} must be {want}, got {getattr(self, name)!r}")

        for name in ("k", "topk_group", "cheapest", "k0"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < (0 if name == "cheapest" else 1)):
                bad(name, "an integer >= 1" if name != "cheapest" else "an integer >= 0")
        if self.beta is not None and self.beta != CALIBRATED:
            if not isinstance(self.beta, float) or not 0.0 <= self.beta <= 1.0:
                bad("beta", f"a number in [0, 1] or {CALIBRATED!r}")
        if self.tau is not None and not (isinstance(self.tau, float) and self.tau >= 0.0):
            bad("tau", "a number >= 0")
        if self.p is not None and not (isinstance(self.p, float) and 0.0 < self.p <= 1.0):
            bad("p", "a number in (0, 1]")
        if self.fraction is not None and not (isinstance(self.fraction, float) and 0.0 <= self.fraction < 1.0):
            bad("fraction", "a number in [0, 1)")
        if self.criterion is not None and self.criterion not in CRITERIA:
            bad("criterion", f"one of {CRITERIA}")
        if self.layers is not None and not all(_is_int(x) and x >= 0 for x in self.layers):
            bad("layers", "a list of layer indices >= 0")
        if self.layers is not None and self.cheapest is not None and len(self.layers) != self.cheapest:
            bad("layers", f"{self.cheapest} layers (the resolved cheapest), or absent")
        if self.decode_only is not None and not isinstance(self.decode_only, bool):
            bad("decode_only", "true or false")
        if self.renormalise is not None and not isinstance(self.renormalise, bool):
            bad("renormalise", "true, false, or null for the strategy's source")
        if self.thresholds is not None:
            ts = self.thresholds
            ok = isinstance(ts, (list, tuple)) and len(ts) > 0 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0 for x in ts)
            if not ok or any(a >= b for a, b in zip(ts, ts[1:])):
                bad("thresholds", "a non-empty increasing list of numbers in [0, 1]")
        if self.quantiles is not None:
            qs = self.quantiles
            ok = isinstance(qs, (list, tuple)) and len(qs) > 0 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 < x < 1.0 for x in qs)
            if not ok or any(a >= b for a, b in zip(qs, qs[1:])):
                bad("quantiles", "a non-empty increasing list of numbers in (0, 1)")
        if self.thresholds is not None and self.quantiles is not None:
            bad("quantiles", "absent when thresholds are given (one or the other)")
        if self.routed_scaling_factor is not None and not (
            isinstance(self.routed_scaling_factor, float) and self.routed_scaling_factor > 0
        ):
            bad("routed_scaling_factor", "a number > 0, or null for the model's")

    @classmethod
    def from_config(cls, variant_cfg: dict) -> "SkipRule":
        """From a config entry like {strategy: threshold, beta: 0.3}; unknown keys are errors."""
        cfg = dict(variant_cfg)
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(cfg) - known):
            raise ValueError(f"unknown skip-rule keys {unknown} in {variant_cfg!r}; known: {sorted(known)}")
        if "strategy" not in cfg:
            raise ValueError(f"skip rule {variant_cfg!r} has no 'strategy'")
        for name in ("beta", "p", "tau", "fraction", "routed_scaling_factor"):  # YAML writes 1 for 1.0
            if _is_int(cfg.get(name)):
                cfg[name] = float(cfg[name])
        for name in ("layers", "thresholds", "quantiles"):
            if isinstance(cfg.get(name), list):
                cfg[name] = tuple(cfg[name])
        return cls(**cfg)

    def to_json(self) -> str:
        """Canonical JSON (only the set fields); from_config(json.loads(s)) round-trips."""
        return json.dumps(self.params() | {"strategy": self.strategy}, sort_keys=True)

    def params(self) -> dict:
        """The rule's parameters without `strategy`, None fields left out (JSON-ready)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "strategy"}
        for name in ("layers", "thresholds", "quantiles"):
            if name in out:
                out[name] = list(out[name])
        if "layer_thresholds" in out:
            out["layer_thresholds"] = {str(l): list(ts) for l, ts in out["layer_thresholds"].items()}
        if "pruned" in out:
            out["pruned"] = {str(l): list(ids) for l, ids in out["pruned"].items()}
        for name in ("layer_beta", "layer_importance"):
            if name in out:
                out[name] = {str(l): b for l, b in out[name].items()}
        return out

    @property
    def is_dense(self) -> bool:
        return self.strategy == "dense"

    @property
    def needs_calibration(self) -> bool:
        """Whether the rule reads the calibration table (a DAG input of its infer job)."""
        return (self.beta == CALIBRATED or self.cheapest is not None or self.quantiles is not None
                or self.strategy in ("prune", "modes", "modulated"))

    @property
    def is_calibrated(self) -> bool:
        """Whether every calibration-derived value is filled in (bind_calibration ran)."""
        if self.beta == CALIBRATED and self.layer_beta is None:
            return False
        if self.cheapest is not None and self.layers is None:
            return False
        if self.strategy in ("modes", "modulated") and self.layer_importance is None:
            return False
        if self.quantiles is not None and self.layer_thresholds is None:
            return False
        return not (self.strategy == "prune" and self.pruned is None)

    def mask_fn(self, layer: int, n_experts: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """keep(w [T,K], ids [T,K]) -> [T,K] bool for masking strategies at one layer;
        None for dense, the re-routing strategies and entropy_k (they read the logits:
        routing.LayerRule). Layer lookups happen here, once."""
        if self.strategy == "topk":
            return lambda w, ids: keep_topk(self.k, w)
        if self.strategy == "threshold":
            beta = self.layer_beta[layer] if self.beta == CALIBRATED else self.beta
            return lambda w, ids: keep_threshold(beta, w)
        if self.strategy == "top_p_within_k":
            return lambda w, ids: keep_top_p_within_k(self.p, w)
        if self.strategy == "layers":
            off = layer in self.layers
            return lambda w, ids: torch.full_like(w, not off, dtype=torch.bool)
        if self.strategy == "batch_aware":
            return lambda w, ids: keep_batch_aware(self.k0, w, ids, n_experts)
        if self.strategy == "modes":
            if layer not in self.layer_importance:
                raise ValueError(f"modes: the calibration has no importance for layer {layer}")
            importance = self.layer_importance[layer]
            return lambda w, ids: keep_modes(importance, self.tau, w)
        return None
