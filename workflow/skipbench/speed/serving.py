"""Whole-model decode time per output token of a multi-GPU serving deployment (stage: roofline).

Compared with published serving measurements (config/hardware/published_serving.yaml,
benchmarks/published_serving.py), so every term is physics with a stated source, and one
term, the engine's fixed cost per layer under CUDA graphs, is calibrated on a published
reading of the same engine, GPU and parallel layout that is not one of the readings it is
checked on. Per GPU and decode step of B tokens at mean context L (shapes: H hidden, I expert
intermediate, n GPUs, D distinct experts per MoE layer per step):

    weights      attention + dense MLPs + shared experts + router + lm_head, read once per
                 step: split over n under tensor parallel, except the MLA down-projections
                 (q_a, kv_a: replicated in TP engines) and the router (bf16, replicated)
    KV cache     B x L x (kv_lora + rope) x 2 bytes per layer: MLA's latent is one shared
                 "head", so under TP every GPU reads all of it (GQA: kv_heads / n of it)
    routed       D x (per-expert cost of the profile's calibration at the slice's bytes: I / n)
                 + pairs x FLOPs / n / rate: the calibration's scaling terms; its per-layer
                 fixed cost is a launch cost of that kernel WITHOUT CUDA graphs and is not
                 carried over: the engine's own `layer_launch_ms` replaces it
    all-reduce   2 per layer (after attention, after the MLP): latency + 2 (n-1)/n x B x H x 2
                 bytes / link bandwidth
    launch       layer_launch_ms per layer (calibrated, see the profile's `serving:` block)
    prefill      requests arrive as others finish: every output token waits, on average,
                 c / OSL prefills of ISL tokens (prefill_ms). Engines capture CUDA graphs for
                 decode only: a prefill runs eagerly, so it pays the calibration's per-layer
                 launch cost measured without graphs (the one place that cost transfers),
                 plus routed FLOPs at the calibration's rate and the rest at peak, over n GPUs

Every memory term streams at the profile's bandwidth, compute terms at its peak rates
(max of the two per operation, as roofline.roofline_ms). Ours: no public tool predicts a
skip variant's serving time this way; the formulas are stated here, not taken from a paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skipbench.speed.costmodel import CostModel
from skipbench.speed.roofline import roofline_ms
from skipbench.speed.specs import KV_BYTES, HardwareProfile, ModelShape, matrix_bytes


@dataclass(frozen=True)
class ServingTerms:
    """What an engine adds to the roofline per layer; each value says where it comes from."""

    engine: str  # e.g. "SGLang 0.5.7, CUDA graphs, TP 8"
    layer_launch_ms: float  # fixed cost per layer and step under the engine's CUDA graphs
    allreduce_ms: float  # latency of one small all-reduce across the node's GPUs
    link_bandwidth: float  # bytes/s one GPU sends over NVLink (one direction)
    sources: dict  # field -> where the number comes from


@dataclass(frozen=True)
class Setting:
    """One decode regime: n GPUs in tensor parallel, c concurrent sequences."""

    gpus: int
    concurrency: int
    context: float  # mean cached tokens per sequence during decode
    isl: float  # mean prompt tokens (prefills that interrupt decode)
    osl: float  # mean output tokens
    tokens_per_step: float = 1.0  # accepted tokens per sequence and step (speculative decoding: > 1)


def uniform_distinct(batch: float, experts: int, top_k: int) -> float:
    """Expected distinct experts a step of `batch` tokens loads when each token picks top_k of
    `experts` uniformly (no trace): E (1 - (1 - k/E)^B). Real routing is skewed: fewer."""
    return experts * (1 - (1 - top_k / experts) ** batch)


def tp_decode_terms(shape: ModelShape, profile: HardwareProfile, cost: CostModel, terms: ServingTerms,
                    setting: Setting, distinct: float, pairs: float | None = None) -> dict[str, float]:  # fmt: skip
    """ms per decode step on one GPU, by term (see the module docstring), and `tpot_ms`."""
    n, b, dtype = setting.gpus, setting.concurrency, shape.weight_dtype
    bw, rate = profile.bandwidth, profile.flops(dtype)
    pairs = b * shape.top_k if pairs is None else pairs
    moe_bytes, moe_flops = shape.layer_fixed(moe=True, dtype=dtype)  # attention + router + shared, per token
    dense_bytes, dense_flops = shape.layer_fixed(moe=False, dtype=dtype)
    router = shape.n_experts * shape.hidden * 2  # bf16, replicated, MoE layers only
    mla_down = 0  # q_a and kv_a projections: replicated in TP engines
    if shape.attention == "mla":
        mla_down = matrix_bytes(shape.kv_lora + shape.rope, shape.hidden, dtype)
        mla_down += matrix_bytes(shape.q_lora, shape.hidden, dtype) if shape.q_lora else 0
    head_params = shape.vocab * shape.hidden  # bf16 lm_head, split over n
    split = (shape.n_moe_layers * (moe_bytes - router - mla_down) + shape.n_dense_layers * (dense_bytes - mla_down)
             + 2 * head_params)  # fmt: skip
    weights = split / n + shape.n_moe_layers * router + shape.n_layers * mla_down
    weight_flops = b * (shape.n_moe_layers * moe_flops + shape.n_dense_layers * dense_flops + 2 * head_params) / n
    kv_bytes, kv_flops = shape.kv_per_token(setting.context)
    kv_share = 1 if shape.attention == "mla" else 1 / n  # MLA's latent is read whole by every TP rank
    out = dict(
        weights_ms=float(roofline_ms(weights, weight_flops, bw, rate)[0]),
        kv_ms=float(roofline_ms(shape.n_layers * b * kv_bytes * kv_share,
                                shape.n_layers * b * kv_flops / n, bw, profile.bf16_flops)[0]),  # fmt: skip
        # the calibration's scaling terms at the TP slice; its launch cost (layer_ms) left out
        routed_ms=float(shape.n_moe_layers * (cost.routed_ms(distinct, pairs, shape.expert_bytes(dtype) / n,
                                                             shape.expert_flops / n) - cost.layer_ms)),  # fmt: skip
        allreduce_ms=float(2 * shape.n_layers * (terms.allreduce_ms + 2 * (n - 1) / n * b * shape.hidden * KV_BYTES
                                                 / terms.link_bandwidth * 1e3)) if n > 1 else 0.0,  # fmt: skip
        launch_ms=shape.n_layers * terms.layer_launch_ms,
    )
    step = sum(out.values())
    out["prefill_share_ms"] = float(b / setting.osl * prefill_ms(shape, profile, cost, n, setting.isl))
    out["step_ms"] = step
    out["tpot_ms"] = step / setting.tokens_per_step + out["prefill_share_ms"]
    return out


def prefill_ms(shape: ModelShape, profile: HardwareProfile, cost: CostModel, n: int, tokens: float) -> float:
    """Eager prefill of one prompt of `tokens` over n tensor-parallel GPUs: the calibration's
    launch cost per MoE layer (timed without CUDA graphs, as prefill runs), routed pairs at
    its fitted rate, attention and the other matrices at the profile's peak. Dense layers'
    and attention's own launch costs are not measured: left out (a lower bound there)."""
    dtype = shape.weight_dtype
    moe_bytes, moe_flops = shape.layer_fixed(moe=True, dtype=dtype)
    dense_flops = shape.layer_fixed(moe=False, dtype=dtype)[1]
    other = tokens * (shape.n_moe_layers * moe_flops + shape.n_dense_layers * dense_flops
                      + shape.n_layers * shape.kv_per_token(tokens / 2)[1])  # fmt: skip
    routed = tokens * shape.top_k * shape.n_moe_layers * shape.expert_flops
    return float(shape.n_moe_layers * cost.layer_ms + (routed / cost.rate + other / profile.flops(dtype)) / n * 1e3)


def calibrate_launch(shape: ModelShape, profile: HardwareProfile, cost: CostModel, terms: ServingTerms,
                     setting: Setting, tpot_ms: float, distinct: float) -> float:  # fmt: skip
    """layer_launch_ms that makes tp_decode_terms give `tpot_ms` at `setting` (linear in it)."""
    zero = tp_decode_terms(shape, profile, cost, ServingTerms(terms.engine, 0.0, terms.allreduce_ms,
                                                              terms.link_bandwidth, {}), setting, distinct)  # fmt: skip
    return float(np.maximum(0.0, (tpot_ms - zero["tpot_ms"]) * setting.tokens_per_step / shape.n_layers))


def dp_ep_floor_step_ms(shape: ModelShape, profile: HardwareProfile, ep: int, per_gpu_batch: float,
                        context: float, redundant: int = 0) -> float:  # fmt: skip
    """Bytes-floor decode step (ms) on one GPU of DeepSeek's decode layout: attention, dense and
    shared-expert weights data-parallel (whole on every GPU, its own `per_gpu_batch` sequences),
    routed experts expert-parallel ((E + redundant) / ep per GPU, all read each step at that
    scale), KV of its own sequences. Communication overlapped (two micro-batches), no launch
    cost: a lower bound on time, for a profile with no calibration of that layout."""
    dtype, b = shape.weight_dtype, per_gpu_batch
    moe_bytes, moe_flops = shape.layer_fixed(moe=True, dtype=dtype)
    dense_bytes, dense_flops = shape.layer_fixed(moe=False, dtype=dtype)
    head = shape.vocab * shape.hidden * 2
    experts = (shape.n_experts + redundant) / ep  # per GPU per MoE layer
    tokens_per_expert = ep * b * shape.top_k / (shape.n_experts + redundant)
    kv_bytes, kv_flops = shape.kv_per_token(context)
    nbytes = (shape.n_moe_layers * (moe_bytes + experts * shape.expert_bytes(dtype)) + shape.n_dense_layers * dense_bytes
              + head + shape.n_layers * b * kv_bytes)  # fmt: skip
    flops = (b * (shape.n_moe_layers * moe_flops + shape.n_dense_layers * dense_flops + 2 * head / 2)
             + shape.n_moe_layers * experts * tokens_per_expert * shape.expert_flops)  # fmt: skip
    attn = shape.n_layers * b * kv_flops / profile.bf16_flops * 1e3
    return float(roofline_ms(nbytes, flops, profile.bandwidth, profile.flops(dtype))[0] + attn)


def max_batch_at_speed(step_ms, tokens_per_step: float, user_tok_s: float, hi: int = 4096) -> int:
    """Largest per-GPU batch whose step (step_ms(b), increasing) still gives each user
    `user_tok_s`: step_ms(b) <= tokens_per_step / user_tok_s."""
    budget = tokens_per_step / user_tok_s * 1e3
    lo = 0
    while lo < hi:  # bisection on an increasing function
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if step_ms(mid) <= budget else (lo, mid - 1)
    return lo
