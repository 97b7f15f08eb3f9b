"""Expert-skipping rules: pure, batched tensor functions over the router's output.

A rule sees what the router returns for a batch of tokens, in any slot order (vLLM's
CPU router calls topk with sorted=False):

    topk_weights [T, K]  DeepSeek-V3: s_i / sum(s) * routed_scaling_factor (2.5)
    topk_ids     [T, K]  expert ids (unchanged by every rule here)

and returns new weights [T, K] plus a keep mask [T, K] (bool). T tokens, K routed slots
per token, E experts. The engine decides how a dropped slot is realised (weight 0, or
an out-of-range id where its kernel really skips the expert).

Every rule is elementwise/sort/cumsum tensor code: no Python loop over tokens, no
`.item()`, no data-dependent shapes, so it runs unchanged inside CUDA graphs.

routed_scaling_factor: the decisions of dense, topk, threshold and top_p are invariant
to a per-token positive scale (ranks, ratios to w_max, shares of the row's mass), so
the 2.5 never changes which slots are kept; weights keep it as they arrive.
renormalise (default False): kept weights are rescaled so they sum to the row's
original total (which includes the 2.5). The default leaves kept weights exactly as
the dense router gave them, so a skipped expert only removes its own term from the
dense sum: the definition of NAEE dynamic skipping and the cleanest "what does this
expert contribute" measurement. Set it to True to model rules that re-route the mass
(llama.cpp --moe-n-expert / hf_overrides num_experts_per_tok renormalise this way).

Adding a strategy (group, layers, prune, batch_aware): write a keep function with the
signature of those below and one `_Strategy` entry in STRATEGIES; rules that need the
layer index or calibration tables get them as extra fields on SkipRule.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable

import torch


def _rank(w: torch.Tensor) -> torch.Tensor:
    """Rank of each slot by weight, 0 = heaviest; ties go to the lower slot. [T,K] int64."""
    order = torch.sort(w, dim=-1, descending=True, stable=True).indices  # [T,K] slot at rank r
    return torch.argsort(order, dim=-1)  # [T,K] rank of slot j


def keep_dense(rule: "SkipRule", w: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(w, dtype=torch.bool)


def keep_topk(rule: "SkipRule", w: torch.Tensor) -> torch.Tensor:
    """Keep the k highest-weight slots (k >= K keeps all)."""
    return _rank(w) < rule.k


def keep_threshold(rule: "SkipRule", w: torch.Tensor) -> torch.Tensor:
    """NAEE dynamic skipping generalised to K > 2: drop slot i if w_i < beta * w_max."""
    w_max = w.amax(dim=-1, keepdim=True)  # [T,1]
    return w >= rule.beta * w_max


def keep_top_p(rule: "SkipRule", w: torch.Tensor) -> torch.Tensor:
    """Smallest weight-ordered prefix whose share of the row's mass reaches p.

    A slot is kept iff the mass of the strictly heavier slots is still below p, which
    keeps the slot that crosses p. p = 1 keeps every slot by definition (a float cumsum
    can round to the total before the lightest slot).
    """
    sorted_w, order = torch.sort(w, dim=-1, descending=True, stable=True)  # [T,K]
    before = torch.cumsum(sorted_w, dim=-1) - sorted_w  # [T,K] mass ahead of rank r
    total = sorted_w.sum(dim=-1, keepdim=True)  # [T,1]
    keep_sorted = (before < rule.p * total) | (rule.p >= 1.0)
    return torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)


@dataclass(frozen=True)
class _Strategy:
    keep: Callable[["SkipRule", torch.Tensor], torch.Tensor]
    params: tuple[str, ...]  # required config keys besides `strategy`


STRATEGIES: dict[str, _Strategy] = {
    "dense": _Strategy(keep_dense, ()),
    "topk": _Strategy(keep_topk, ("k",)),
    "threshold": _Strategy(keep_threshold, ("beta",)),
    "top_p": _Strategy(keep_top_p, ("p",)),
}


@dataclass(frozen=True)
class SkipRule:
    """One skip setting, e.g. SkipRule("topk", k=2). Build it from config with from_config."""

    strategy: str = "dense"
    k: int | None = None  # topk: slots kept per token
    beta: float | None = None  # threshold: fraction of the token's largest weight
    p: float | None = None  # top_p: share of the token's routed mass
    renormalise: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown skip strategy {self.strategy!r}; known: {sorted(STRATEGIES)}")
        needed = STRATEGIES[self.strategy].params
        for name in ("k", "beta", "p"):
            given = getattr(self, name) is not None
            if given != (name in needed):
                what = "needs" if name in needed else "does not take"
                raise ValueError(f"strategy {self.strategy!r} {what} parameter {name!r}")
        if self.k is not None and (not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1):
            raise ValueError(f"topk k must be an integer >= 1, got {self.k!r}")
        if self.beta is not None and not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"threshold beta must lie in [0, 1], got {self.beta!r}")
        if self.p is not None and not 0.0 < self.p <= 1.0:
            raise ValueError(f"top_p p must lie in (0, 1], got {self.p!r}")
        if not isinstance(self.renormalise, bool):
            raise ValueError(f"renormalise must be true or false, got {self.renormalise!r}")

    @classmethod
    def from_config(cls, variant_cfg: dict) -> "SkipRule":
        """From a config entry like {strategy: threshold, beta: 0.3}; unknown keys are errors."""
        cfg = dict(variant_cfg)
        known = {"strategy", "k", "beta", "p", "renormalise"}
        if unknown := sorted(set(cfg) - known):
            raise ValueError(f"unknown skip-rule keys {unknown} in {variant_cfg!r}; known: {sorted(known)}")
        if "strategy" not in cfg:
            raise ValueError(f"skip rule {variant_cfg!r} has no 'strategy'")
        for name in ("beta", "p"):  # YAML writes 1 for 1.0
            if isinstance(cfg.get(name), int) and not isinstance(cfg[name], bool):
                cfg[name] = float(cfg[name])
        return cls(**cfg)

    def to_json(self) -> str:
        """Canonical JSON (only the set fields); from_config(json.loads(s)) round-trips."""
        return json.dumps(self.params() | {"strategy": self.strategy}, sort_keys=True)

    def params(self) -> dict:
        """The rule's parameters without `strategy`, None fields left out."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "strategy"}

    @property
    def is_dense(self) -> bool:
        return self.strategy == "dense"

    def apply(self, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T,K], keep [T,K] bool): dropped slots get weight 0.

        topk_ids is accepted so that id-aware rules (prune, batch_aware) share the
        signature; the rules here decide from the weights alone.
        """
        keep = STRATEGIES[self.strategy].keep(self, topk_weights)  # [T,K]
        if self.is_dense:
            return topk_weights, keep
        w = topk_weights * keep
        if self.renormalise:
            # rescale to the dense row total (routed_scaling_factor included);
            # at least one slot always survives, so the kept sum is > 0 when the total is.
            w = w * (topk_weights.sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1e-30))
        return w, keep
