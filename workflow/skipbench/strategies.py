"""Expert-skipping rules: what a variant in config means, validated, serialisable.

A SkipRule is one skip setting from config (`{strategy: topk, k: 2}`). Engines turn it
into one `routing.LayerRule` per MoE layer, which does the tensor work; this module
holds the rule's parameters, their checks, and the per-token keep functions of the
strategies that only mask the router's own choice. Shapes: T tokens, K routed slots
per token, E experts.

| strategy    | decides from                    | parameters                              |
|-------------|---------------------------------|-----------------------------------------|
| dense       | nothing (unchanged routing)     |                                         |
| topk        | slot weights                    | k                                       |
| threshold   | slot weights (NAEE)             | beta, or "calibrated" (per-layer median w2/w1) |
| top_p       | slot weights                    | p                                       |
| group       | router scores (re-routes)       | topk_group                              |
| layers      | layer index                     | layers, or cheapest (n, by calibration) |
| prune       | router scores (re-routes)       | fraction, criterion (frequency | reap)  |
| batch_aware | slot weights + the whole batch  | k0                                      |

Weights, for every strategy (both are config options):
- renormalise (default false): false leaves each kept expert the weight the dense
  router's formula gives it (for masking rules: exactly the dense weight), so a skipped
  expert only removes its own term: NAEE's definition and the cleanest measure of what
  an expert contributes. true rescales each token's kept weights to the dense router's
  total for that token, which includes routed_scaling_factor (what llama.cpp
  --moe-n-expert, hf_overrides num_experts_per_tok and a pruned model's own
  norm_topk_prob do).
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
REROUTE = ("group", "prune")  # strategies that re-run the router on its scores


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


def keep_top_p(p: float, w: torch.Tensor) -> torch.Tensor:
    """Smallest weight-ordered prefix whose share of the row's mass reaches p.

    A slot is kept iff the mass of the strictly heavier slots is still below p, which
    keeps the slot that crosses p. p = 1 keeps every slot by definition (a float cumsum
    can round to the total before the lightest slot).
    """
    sorted_w, order = torch.sort(w, dim=-1, descending=True, stable=True)  # [T,K]
    before = torch.cumsum(sorted_w, dim=-1) - sorted_w  # [T,K] mass ahead of rank r
    keep_sorted = (before < p * sorted_w.sum(dim=-1, keepdim=True)) | (p >= 1.0)
    return torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)


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
    "topk": _Strategy(("k",), "keep the k heaviest slots"),
    "threshold": _Strategy(("beta",), "drop slot i if w_i < beta * w_max"),
    "top_p": _Strategy(("p",), "keep the smallest weight-ordered prefix with mass >= p"),
    "group": _Strategy(("topk_group",), "DeepSeek group-limited routing with fewer groups"),
    "layers": _Strategy(("layers|cheapest",), "no routed experts in chosen layers (shared stays)"),
    "prune": _Strategy(("fraction", "criterion"), "remove experts offline, re-route to the rest"),
    "batch_aware": _Strategy(("k0",), "top-k0 per token plus experts the batch loads anyway (OEA)"),
}
_PARAMS = ("k", "beta", "p", "topk_group", "layers", "cheapest", "fraction", "criterion", "k0")
_CALIBRATION = ("layer_beta", "pruned")  # filled by calibrate.bind_calibration, never by hand


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class SkipRule:
    """One skip setting, e.g. SkipRule("topk", k=2). Build it from config with from_config."""

    strategy: str = "dense"
    k: int | None = None  # topk: slots kept per token
    beta: float | str | None = None  # threshold: fraction of the token's largest weight, or "calibrated"
    p: float | None = None  # top_p: share of the token's routed mass
    topk_group: int | None = None  # group: expert groups a token may use (DeepSeek-V3: 4 of 8)
    layers: tuple[int, ...] | None = None  # layers: model layer indices without routed experts
    cheapest: int | None = None  # layers: that many layers, least routed contribution in calibration
    fraction: float | None = None  # prune: share of each layer's experts removed
    criterion: str | None = None  # prune: "frequency" or "reap" (saliency), lowest removed
    k0: int | None = None  # batch_aware: slots a token always keeps
    renormalise: bool = False
    routed_scaling_factor: float | None = None  # None: the model's
    # from the calibration table (calibrate.bind_calibration):
    layer_beta: dict[int, float] | None = None  # threshold "calibrated": layer -> median w2/w1
    pruned: dict[int, tuple[int, ...]] | None = None  # prune: layer -> removed expert ids

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
        # JSON has string keys and lists: normalise so equality and hashing of to_json hold
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted(int(x) for x in self.layers)))
        if self.layer_beta is not None:
            object.__setattr__(self, "layer_beta", {int(l): float(b) for l, b in self.layer_beta.items()})
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
        if not isinstance(self.renormalise, bool):
            bad("renormalise", "true or false")
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
        for name in ("beta", "p", "fraction", "routed_scaling_factor"):  # YAML writes 1 for 1.0
            if _is_int(cfg.get(name)):
                cfg[name] = float(cfg[name])
        if isinstance(cfg.get("layers"), list):
            cfg["layers"] = tuple(cfg["layers"])
        return cls(**cfg)

    def to_json(self) -> str:
        """Canonical JSON (only the set fields); from_config(json.loads(s)) round-trips."""
        return json.dumps(self.params() | {"strategy": self.strategy}, sort_keys=True)

    def params(self) -> dict:
        """The rule's parameters without `strategy`, None fields left out (JSON-ready)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "strategy"}
        if "layers" in out:
            out["layers"] = list(out["layers"])
        if "pruned" in out:
            out["pruned"] = {str(l): list(ids) for l, ids in out["pruned"].items()}
        if "layer_beta" in out:
            out["layer_beta"] = {str(l): b for l, b in out["layer_beta"].items()}
        return out

    @property
    def is_dense(self) -> bool:
        return self.strategy == "dense"

    @property
    def needs_calibration(self) -> bool:
        """Whether the rule reads the calibration table (a DAG input of its infer job)."""
        return self.beta == CALIBRATED or self.cheapest is not None or self.strategy == "prune"

    @property
    def is_calibrated(self) -> bool:
        """Whether every calibration-derived value is filled in (bind_calibration ran)."""
        if self.beta == CALIBRATED and self.layer_beta is None:
            return False
        if self.cheapest is not None and self.layers is None:
            return False
        return not (self.strategy == "prune" and self.pruned is None)

    def mask_fn(self, layer: int, n_experts: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """keep(w [T,K], ids [T,K]) -> [T,K] bool for masking strategies at one layer;
        None for dense and the re-routing strategies. Layer lookups happen here, once."""
        if self.strategy == "topk":
            return lambda w, ids: keep_topk(self.k, w)
        if self.strategy == "threshold":
            beta = self.layer_beta[layer] if self.beta == CALIBRATED else self.beta
            return lambda w, ids: keep_threshold(beta, w)
        if self.strategy == "top_p":
            return lambda w, ids: keep_top_p(self.p, w)
        if self.strategy == "layers":
            off = layer in self.layers
            return lambda w, ids: torch.full_like(w, not off, dtype=torch.bool)
        if self.strategy == "batch_aware":
            return lambda w, ids: keep_batch_aware(self.k0, w, ids, n_experts)
        return None
