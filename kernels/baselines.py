"""What the skip-aware kernel is measured against, and the skip settings of the benchmark.

Baselines (same contract as reference.moe_reference: skipped slots are not computed):
  grouped_mm_moe  torch._grouped_mm over expert-sorted rows, BF16 (transformers' grouped_mm
                  path): skipped slots sort past the last group and are never multiplied
  eager_moe       a Python loop over the experts that have rows, BF16 (transformers' eager
                  path): one host sync to find them, several launches per expert
Shapes: T tokens, K slots, H hidden, I expert intermediate, E experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .moe_triton import moe_triton

KeepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, weights) [T, K] -> keep [T, K]


def skip_rules(experts: int) -> dict[str, KeepFn]:
    """The benchmark's skip settings (skipbench.skip.strategies): dense, static top-4 and top-2,
    NAEE threshold (beta 0.3) and batch-aware (OEA, k0 = 2)."""
    from skipbench.skip.strategies import SkipRule

    settings = {
        "dense": SkipRule("dense"),
        "top4": SkipRule("topk", k=4),
        "top2": SkipRule("topk", k=2),
        "threshold0.3": SkipRule("threshold", beta=0.3),
        "batch_aware2": SkipRule("batch_aware", k0=2),
    }

    def keep_fn(rule: SkipRule) -> KeepFn:
        mask = rule.mask_fn(0, experts)  # w, ids -> keep; None: keeps every slot
        if mask is None:
            return lambda ids, w: torch.ones_like(ids, dtype=torch.bool)
        return lambda ids, w: mask(w, ids)

    return {name: keep_fn(rule) for name, rule in settings.items()}


def grouped_mm_moe(x, w13, w2, ids, weights, keep):
    """BF16 grouped GEMMs; no host sync (so it can be graph-captured like the kernel)."""
    t, k = ids.shape
    e = w13.shape[0]
    flat = torch.where(keep, ids, e).reshape(-1)  # T*K, skipped -> E (sorts last)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(e + 1, dtype=torch.int32, device=x.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))  # fmt: skip
    offs = torch.cumsum(counts[:e], 0, dtype=torch.int32)  # E, end row of each expert
    xs = x[order // k].to(w13.dtype)  # T*K, H
    gate, up = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs).chunk(2, -1)
    y = torch._grouped_mm(F.silu(gate) * up, w2.transpose(-2, -1), offs=offs)  # T*K, H
    live = torch.arange(t * k, device=x.device) < offs[-1]  # rows past the last group are garbage
    y = torch.where(live[:, None], y.float() * weights.reshape(-1)[order, None].float(), 0.0)
    return torch.zeros(t, x.shape[1], device=x.device).index_add_(0, order // k, y).to(x.dtype)


def eager_moe(x, w13, w2, ids, weights, keep):
    """One expert at a time, only those with a kept slot (a host sync finds them)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    flat = torch.where(keep, ids, -1)
    for e in flat.unique().tolist():
        if e < 0:
            continue
        token, slot = torch.nonzero(flat == e, as_tuple=True)
        gate, up = F.linear(x[token].to(w13.dtype), w13[e]).chunk(2, -1)
        y = F.linear(F.silu(gate) * up, w2[e])
        out.index_add_(0, token, y.float() * weights[token, slot, None].float())
    return out.to(x.dtype)


@dataclass(frozen=True)
class Method:
    fn: Callable  # (x, ids, weights, keep) -> out [T, H]
    weight_dtype: str  # fp8 or bf16: the bytes each loaded expert costs
    skips: bool  # False: computes every routed slot (distinct experts of the dense routing)
    graph_safe: bool  # no host sync: timed from a CUDA graph


def methods(layer: dict, config_for) -> dict[str, Method]:
    """The timed implementations over one layer. layer: w13/w2/scales (FP8) and w13_bf16/
    w2_bf16 (the same weights dequantised). `weight0_kernel` is the skip kernel fed zero
    weights instead of a keep mask: the control, it must not get faster."""
    fp8, bf16, scales = (layer["w13"], layer["w2"]), (layer["w13_bf16"], layer["w2_bf16"]), layer["scales"]

    def kernel(x, ids, w, keep):
        return moe_triton(x, *fp8, ids, w, keep, **scales, config=config_for(x.shape[0]))

    def weight0(x, ids, w, keep):
        return moe_triton(x, *fp8, ids, w * keep, None, **scales, config=config_for(x.shape[0]))

    return {
        "skip_kernel": Method(kernel, "fp8", True, True),
        "weight0_kernel": Method(weight0, "fp8", False, True),
        "grouped_mm_bf16": Method(lambda x, ids, w, keep: grouped_mm_moe(x, *bf16, ids, w, keep), "bf16", True, True),
        "eager_loop_bf16": Method(lambda x, ids, w, keep: eager_moe(x, *bf16, ids, w, keep), "bf16", True, False),
    }
