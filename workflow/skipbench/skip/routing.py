"""A SkipRule applied at one MoE layer: the tensor code shared by the vLLM plugin and the oracle.

Hook level. Both engines call the rule right after the model's own router, with the
router's output (topk_weights [T,K], topk_ids [T,K]) AND its raw logits [T,E]:
- masking strategies (topk, threshold, top_p, layers, batch_aware) only clear slots
  of the router's choice, so they need the weights alone (batch_aware also the ids);
- group and prune change WHICH experts are eligible, which the router's top-K cannot
  tell (the 9th expert is not in it), so they re-run DeepSeek's selection on the
  logits with fewer groups or a pruned expert set (`route` below). A hook on the
  router's output is the one level every vLLM backend exposes (FusedMoERouter
  .select_experts receives the logits) and that transformers has (the gate returns
  them); vLLM's `custom_routing_function` is ignored by grouped top-k routers.

Everything here is elementwise / sort / topk / scatter on the device: no `.item()`, no
data-dependent shapes, no Python loop over tokens, so it runs inside CUDA graphs.
Per-layer constants (the pruned-expert mask, a calibrated beta) are built once in
LayerRule.__init__, which engines call before any graph capture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from skipbench.skip.strategies import REROUTE, SkipRule, keep_topk


@dataclass(frozen=True)
class RouterSpec:
    """One MoE layer's router as a hook sees it (DeepSeek-V3 values in comments)."""

    layer: int  # model layer index (DeepSeek-V3: 3..60)
    n_experts: int  # E (256)
    top_k: int  # K (8)
    n_group: int  # expert groups (8); 1 = no group limit
    topk_group: int  # groups a token may use (4)
    scoring: str  # "sigmoid" (DeepSeek-V3) or "softmax"
    routed_scaling_factor: float  # the MODEL's factor (2.5), wherever the engine applies it
    bias: torch.Tensor | None = None  # [E] e_score_correction_bias: selection only
    norm_topk_prob: bool = True  # the router divides the K chosen scores by their sum (DeepSeek-V3: true)


def scores_of(logits: torch.Tensor, spec: RouterSpec) -> torch.Tensor:
    """The router's per-expert scores [T,E] (fp32): sigmoid (DeepSeek-V3) or softmax."""
    return logits.float().sigmoid() if spec.scoring == "sigmoid" else logits.float().softmax(-1)


def probabilities(logits: torch.Tensor, spec: RouterSpec) -> torch.Tensor:
    """The router's probabilities over ALL E experts [T,E]: softmax as is; sigmoid scores
    divided by their sum over all E, i.e. DeepSeek-V3's own weight formula s / sum(s)
    applied to the full expert set (a sigmoid router defines no other distribution)."""
    s = scores_of(logits, spec)
    return s / s.sum(-1, keepdim=True) if spec.scoring == "sigmoid" else s


def route(logits: torch.Tensor, spec: RouterSpec, topk_group: int, allowed: torch.Tensor | None = None,
          top_k: int | None = None):
    """DeepSeek-V3 selection (noaux_tc) on logits [T,E]: ids [T,K], scores [T,K], valid [T,K].

    Same operations in the same order as transformers' DeepseekV3TopkRouter and vLLM's
    CPU grouped top-k, so the model's own topk_group with nothing pruned selects the
    same experts. `allowed` [E] bool removes experts (prune): their choice score is
    -inf, a group needs two allowed experts to score, and a slot that could only be
    filled by a removed expert is marked invalid (skipped) rather than mis-routed.
    top_k < K re-runs the router with K' = top_k (vLLM num_experts_per_tok, llama.cpp
    expert_used_count): the K' best by the BIASED choice score are valid, the rest of
    the K slots are invalid.
    """
    t, e = logits.shape
    scores = scores_of(logits, spec)  # [T,E]
    choice = scores if spec.bias is None else scores + spec.bias.float()  # [T,E] bias: selection only
    if allowed is not None:
        choice = choice.masked_fill(~allowed, float("-inf"))
    if spec.n_group > 1:
        grouped = choice.view(t, spec.n_group, e // spec.n_group)  # [T,G,E/G]
        group_scores = grouped.topk(2, dim=-1)[0].sum(-1) if spec.bias is not None else grouped.amax(-1)  # [T,G]
        group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]  # [T,g]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0)  # [T,G]
        score_mask = group_mask.unsqueeze(-1).expand(t, spec.n_group, e // spec.n_group).reshape(t, e)
        choice = choice.masked_fill(~score_mask.bool(), float("-inf"))
    if top_k is None or top_k >= spec.top_k:
        vals, ids = torch.topk(choice, k=spec.top_k, dim=-1, sorted=False)  # [T,K]
        return ids, scores.gather(1, ids), vals > float("-inf")
    vals, ids = torch.topk(choice, k=spec.top_k, dim=-1, sorted=True)  # [T,K] best first
    rank = torch.arange(spec.top_k, device=ids.device)  # [K]
    return ids, scores.gather(1, ids), (vals > float("-inf")) & (rank < top_k)


def keep_huang_top_p(p: float, probs: torch.Tensor, slots: int):
    """Huang et al. 2024 top-p over the probabilities of ALL experts probs [T,E]:
    (ids [T,S], keep [T,S]) for the S = `slots` most probable experts.

    Their code (ZhenweiAn/Dynamic_MoE, modeling/modeling_moe.py,
    top_p_sampling_batched_all_sequence): sort descending, cumsum, drop ranks with
    cumsum > p except the first such rank. So rank r is kept iff the mass of the
    ranks before it is <= p: an exact tie (cumsum == p) keeps one more expert, as
    there. The comparison allows 1e-6 of float rounding in the tie's favour.
    """
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # [T,E]
    before = torch.cumsum(sorted_p.double(), dim=-1) - sorted_p.double()  # [T,E] mass ahead of rank r
    keep = before <= p + 1e-6
    return order[:, :slots], keep[:, :slots]


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of probs [T,E] divided by log E: [T,1] in [0, 1]."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1, keepdim=True) / math.log(probs.shape[-1])


def entropy_k(thresholds: torch.Tensor, probs: torch.Tensor, k_max: int) -> torch.Tensor:
    """Adaptive-K: slots per token [T,1] = 1 + number of thresholds [n] the token's router
    entropy (over all E, normalised by log E to [0, 1]) reaches, capped at K."""
    return (1 + (normalised_entropy(probs) >= thresholds).sum(-1, keepdim=True)).clamp_max(k_max)  # [T,1]


class LayerRule:
    """A SkipRule bound to one layer's router: apply(weights, ids, logits) -> (weights, ids, keep).

    Weights of the kept experts (renormalise null, the default, is each source's own):
    - threshold: renormalised (NAEE's forward, Lucky-Lance/Expert_Sparsity
      model/modeling_mixtral.py line 58, `routing_weights /= routing_weights.sum(...)`
      right after zeroing the skipped weight);
    - top_p: not renormalised, each expert weighs its probability (Huang et al.'s
      SwitchMLP multiplies expert outputs by the top-p sorted_probs as they are);
    - modes: not renormalised, the kept slots keep the router's weights (ModelTC/MoDES
      models/qwen3.py line 167, `router_weights.masked_fill_(to_zero, 0.0)` on the top-K
      renormalised weights, passed to the experts as they are);
    - every other strategy: what the model's own router gives the kept set, i.e.
      renormalised iff the router normalises its top-K (norm_topk_prob: DeepSeek-V3
      `topk_weights /= denominator` in transformers' DeepseekV3TopkRouter, Qwen,
      Mixtral) and the bare score otherwise (OLMoE, DeepSeek-V2), times the model's
      routed_scaling_factor either way.
    renormalise true / false overrides it (ablations): true rescales the kept weights to
    the dense router's row total, false keeps the dense row's normaliser.
    """

    def __init__(self, rule: SkipRule, spec: RouterSpec, device: torch.device | str = "cpu"):
        if rule.needs_calibration and not rule.is_calibrated:
            raise ValueError(f"{rule.to_json()} needs the calibration table (calibrate.bind_calibration)")
        if rule.strategy == "group" and not 1 <= rule.topk_group <= spec.n_group:
            raise ValueError(f"topk_group must lie in [1, n_group={spec.n_group}], got {rule.topk_group}")
        self.rule, self.spec = rule, spec
        self.mask = rule.mask_fn(spec.layer, spec.n_experts)
        self.topk_group = rule.topk_group if rule.strategy == "group" else spec.topk_group
        self.allowed = None  # [E] bool, prune only
        if rule.strategy == "prune":
            removed = list(rule.pruned.get(spec.layer, ()))
            if spec.n_experts - len(removed) < spec.top_k:
                raise ValueError(f"layer {spec.layer}: pruning {len(removed)} of {spec.n_experts} leaves fewer than K")
            self.allowed = torch.ones(spec.n_experts, dtype=torch.bool, device=device)
            self.allowed[removed] = False
        if rule.strategy == "entropy_k":
            cuts = rule.thresholds if rule.quantiles is None else rule.layer_thresholds.get(spec.layer)
            if cuts is None:
                raise ValueError(f"entropy_k: the calibration has no entropy quantiles for layer {spec.layer}")
            self.entropy_t = torch.tensor(cuts, dtype=torch.float32, device=device)  # [n]
        if rule.strategy == "modulated":
            # our MoDES-like ablation: the global threshold seen through this layer's importance
            self.modulated_tau = rule.tau / max(rule.layer_importance.get(spec.layer, 1.0), 1e-12)
        self.renormalise = rule.renormalise
        if self.renormalise is None:
            self.renormalise = {"threshold": True, "top_p": False, "modes": False}.get(rule.strategy, spec.norm_topk_prob)
        # kept weights times this: the config's routed_scaling_factor replaces the model's
        new = rule.routed_scaling_factor
        self.scale = 1.0 if new is None else new / spec.routed_scaling_factor

    def apply(self, weights: torch.Tensor, ids: torch.Tensor, logits: torch.Tensor | None,
              decode_rows: torch.Tensor | None = None):
        """weights [T,K] and ids [T,K] from the model's router, logits [T,E] its input;
        decode_rows [T] bool (engines that know the phase): a decode_only rule leaves the
        other rows exactly dense. Without it every row counts as decode.

        Returns (weights [T,K] (0 where skipped), ids [T,K] (changed only by re-routing
        strategies, in the dtype given), keep [T,K] bool)."""
        if self.rule.is_dense:
            return weights, ids, torch.ones_like(weights, dtype=torch.bool)
        if self.rule.strategy in REROUTE:
            ids_out, base, keep = self._reroute(weights, ids, logits)
        elif self.rule.strategy == "entropy_k":
            k = entropy_k(self.entropy_t, probabilities(self._logits(logits), self.spec), self.spec.top_k)
            ids_out, base, keep = ids, weights, keep_topk(k, weights)
        elif self.rule.strategy == "modulated":
            # keep slot i iff importance * p_i >= tau; the token's top slot always stays
            probs = probabilities(self._logits(logits), self.spec).gather(1, ids.long())  # [T,K]
            ids_out, base, keep = ids, weights, (probs >= self.modulated_tau) | keep_topk(1, weights)
        else:
            ids_out, base, keep = ids, weights, self.mask(weights, ids)
        w = base * keep
        if self.renormalise:
            # to the dense row total (routed_scaling_factor included); a row that keeps
            # nothing (layers strategy) stays 0
            w = w * (weights.sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1e-30))
        if self.scale != 1.0:
            w = w * self.scale
        w = w.to(weights.dtype)
        if self.rule.decode_only and decode_rows is not None:
            d = decode_rows.view(-1, 1)  # [T,1]
            w, ids_out, keep = torch.where(d, w, weights), torch.where(d, ids_out, ids), keep | ~d
        return w, ids_out, keep

    def uncapped(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        """[T] experts the rule's own definition keeps before the hooks' cap at K slots: Huang's
        top_p over all E is not bounded by K (engines count how often the cap binds). None for
        every other rule: bounded by K by construction."""
        if self.rule.strategy != "top_p":
            return None
        probs = probabilities(self._logits(logits), self.spec)  # [T,E]
        return keep_huang_top_p(self.rule.p, probs, probs.shape[-1])[1].sum(-1)  # [T]

    def _logits(self, logits):
        if logits is None:
            raise ValueError(f"strategy {self.rule.strategy!r} needs the router logits")
        return logits

    def _reroute(self, weights, ids, logits):
        """(ids, weights before renormalisation, keep) of the re-run selection.

        A kept expert's weight before renormalisation is its score times the factor that
        maps the dense router's scores to its weights for this token (DeepSeek: routed_
        scaling_factor / sum of the dense selection's scores): the dense normaliser.
        top_p (Huang) weighs each expert by its probability over all E times the scale
        the router applies (routed_scaling_factor where it is in the weights). Rows whose
        selection did not change return the router's own ids and weights bit for bit.
        """
        spec = self.spec
        logits = self._logits(logits)
        scores = scores_of(logits, spec)  # [T,E]
        dense_scores = scores.gather(1, ids.long())  # [T,K]
        factor = weights.float().sum(-1, keepdim=True) / dense_scores.sum(-1, keepdim=True)  # [T,1]
        if self.rule.strategy == "top_p":
            probs = probabilities(logits, spec)  # [T,E]
            new_ids, valid = keep_huang_top_p(self.rule.p, probs, spec.top_k)  # [T,K] x2
            # the weights' own scale: routed_scaling_factor if the router applied it, else 1
            applied = weights.float().sum(-1, keepdim=True) if spec.norm_topk_prob else factor  # [T,1]
            new_base = probs.gather(1, new_ids) * applied
        else:
            k = self.rule.k if self.rule.strategy == "router_topk" else None
            new_ids, new_scores, valid = route(logits, spec, self.topk_group, self.allowed, top_k=k)  # [T,K] x3
            new_base = new_scores * factor
        t = ids.shape[0]
        old_set = torch.zeros(t, spec.n_experts, dtype=torch.bool, device=ids.device).scatter_(1, ids.long(), True)
        new_set = torch.zeros_like(old_set).scatter_(1, new_ids, valid)  # [T,E]
        same = (old_set == new_set).all(-1, keepdim=True)  # [T,1]
        if self.rule.strategy == "top_p":
            same = torch.zeros_like(same)  # Huang's weights are never the router's
        out_ids = torch.where(same, ids, new_ids.to(ids.dtype))
        base = torch.where(same, weights, new_base.to(weights.dtype))
        keep = same | valid
        return out_ids, base, keep
