"""A real skip path, timed on CPU: one MoE layer's routed experts where a skipped expert is never computed.

The layer is the eager per-expert loop (as transformers' `eager` experts): for every expert
that at least one kept (token, slot) pair selects, gather its tokens, run its SwiGLU MLP,
scatter-add the weighted output. An expert no kept pair selects is not read and not
computed, so skipping saves real bytes and FLOPs; this module measures how much.

Routing is synthetic and fresh for every timed call (seeded): softmax over the logits of a
Gaussian router, top-K slots, then the skip rule keeps a subset of the slots (dense: all K,
topk k: the k highest, threshold beta: slots whose weight >= beta x the token's top weight,
NAEE-style, skipbench.skip.strategies). Fresh routing per call keeps a repeated expert from
being served warm from cache, as successive decode steps would not be either.
Shapes: B tokens (decode batch), H hidden, I expert intermediate, E experts, K router slots.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from skipbench.speed.costmodel import CostModel, fit_cost_model

log = logging.getLogger(__name__)

# One row per (batch, rule): what was computed and how long it took (median over calls).
CPU_MOE_SCHEMA = pa.schema(
    [
        ("batch", pa.int32()),  # tokens per decode step
        ("rule", pa.string()),  # dense, topk:k, threshold:beta
        ("slots", pa.float64()),  # kept (token, slot) pairs per call: mean over calls
        ("distinct_experts", pa.float64()),  # experts computed per call: mean over calls
        ("bytes", pa.float64()),  # weight bytes of those experts per call: mean over calls
        ("ms", pa.float64()),  # median wall time of one call
        ("ms_p10", pa.float64()),
        ("ms_p90", pa.float64()),
        ("calls", pa.int32()),  # timed calls (after one warm-up)
        ("dtype", pa.string()),  # weight and activation dtype
        ("threads", pa.int32()),  # torch intra-op threads
    ]
)


@dataclass(frozen=True)
class MoeShape:
    hidden: int = 2048  # DeepSeek-V2-Lite hidden_size
    intermediate: int = 1408  # its moe_intermediate_size
    experts: int = 64  # n_routed_experts
    top_k: int = 6  # num_experts_per_tok
    dtype: str = "float32"  # torch dtype name

    @property
    def expert_bytes(self) -> int:
        import torch

        return 3 * self.hidden * self.intermediate * getattr(torch, self.dtype).itemsize

    @property
    def pair_flops(self) -> int:
        return 6 * self.hidden * self.intermediate  # gate, up, down: 2 H I each


def keep_mask(weights: np.ndarray, rule: str) -> np.ndarray:
    """[B, K] descending top-K weights -> [B, K] bool slots kept by `rule`."""
    kind, _, arg = rule.partition(":")
    if kind == "dense":
        return np.ones_like(weights, bool)
    if kind == "topk":
        return np.broadcast_to(np.arange(weights.shape[1]) < int(arg), weights.shape).copy()
    if kind == "threshold":
        return weights >= float(arg) * weights[:, :1]
    raise ValueError(f"unknown rule {rule!r} (dense, topk:k, threshold:beta)")


class EagerMoE:
    """E SwiGLU experts; forward computes only the experts a kept slot selects."""

    def __init__(self, shape: MoeShape, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        dt, h, i = getattr(torch, shape.dtype), shape.hidden, shape.intermediate
        scale = h**-0.5
        # gate+up fused [E, 2I, H] and down [E, H, I]: the layout transformers' eager experts use
        self.gate_up = [(torch.randn(2 * i, h, generator=g) * scale).to(dt) for _ in range(shape.experts)]
        self.down = [(torch.randn(h, i, generator=g) * i**-0.5).to(dt) for _ in range(shape.experts)]
        self.shape = shape

    def forward(self, x, ids: np.ndarray, weights: np.ndarray, kept: np.ndarray):
        """x [B, H]; ids, weights, kept [B, K] -> [B, H]. Skipped slots never reach an expert."""
        import torch
        import torch.nn.functional as F

        out = torch.zeros_like(x)
        tok, slot = np.nonzero(kept)  # P kept pairs
        experts = ids[tok, slot]  # P
        for e in np.unique(experts):  # only the experts some kept pair selects
            sel = experts == e
            t = torch.from_numpy(tok[sel])
            w = torch.from_numpy(weights[tok[sel], slot[sel]]).to(x.dtype)[:, None]
            gate, up = (x[t] @ self.gate_up[e].T).chunk(2, dim=-1)
            out.index_add_(0, t, (F.silu(gate) * up) @ self.down[e].T * w)
        return out


def route(rng: np.random.Generator, batch: int, shape: MoeShape) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic router: ids [B, K] and descending softmax weights [B, K] of the top-K."""
    logits = rng.standard_normal((batch, shape.experts))  # B, E
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ids = np.argsort(-p, axis=1)[:, : shape.top_k]  # B, K
    return ids, np.take_along_axis(p, ids, 1).astype(np.float32)


def bench_layer(layer: EagerMoE, batches, rules, calls: int = 7, seed: int = 0) -> pd.DataFrame:
    """CPU_MOE_SCHEMA rows: every (batch, rule) timed over `calls` fresh routings.

    Rules are interleaved: each routing is run under every rule in turn (order reversed
    every other call), so load from other processes and drift hit every rule alike."""
    import torch

    shape, rows = layer.shape, []
    dt = getattr(torch, shape.dtype)
    for batch in batches:
        rng = np.random.default_rng([seed, batch])  # same routings for every rule at a batch
        times, slots, distinct = ({r: [] for r in rules} for _ in range(3))
        for call in range(calls + 1):
            ids, w = route(rng, batch, shape)
            x = torch.randn(batch, shape.hidden, generator=torch.Generator().manual_seed(call)).to(dt)
            for rule in rules if call % 2 else rules[::-1]:
                kept = keep_mask(w, rule)
                t0 = time.perf_counter()
                layer.forward(x, ids, w, kept)
                if call:  # call 0 warms up
                    times[rule].append((time.perf_counter() - t0) * 1e3)
                    slots[rule].append(kept.sum())
                    distinct[rule].append(len(np.unique(ids[kept])))
        for rule in rules:
            t, d = times[rule], float(np.mean(distinct[rule]))
            rows.append(dict(batch=batch, rule=rule, slots=float(np.mean(slots[rule])), distinct_experts=d,
                             bytes=d * shape.expert_bytes, ms=float(np.median(t)), ms_p10=float(np.percentile(t, 10)),
                             ms_p90=float(np.percentile(t, 90)), calls=calls, dtype=shape.dtype,
                             threads=torch.get_num_threads()))  # fmt: skip
            log.info("cpu moe b=%d %s: %.2f experts, %.2f ms", batch, rule, d, rows[-1]["ms"])
    return pd.DataFrame(rows)[CPU_MOE_SCHEMA.names]


def fit_this_machine(bench: pd.DataFrame, shape: MoeShape, bandwidth: float, source: str,
                     fit_rules=None) -> CostModel:  # fmt: skip
    """CostModel of this machine's eager layer, fitted on the rows whose rule is in
    `fit_rules` (default: all; held-out rules then test the fit)."""
    rows = bench if fit_rules is None else bench[bench["rule"].isin(fit_rules)]
    return fit_cost_model(rows, "ms", shape.expert_bytes, shape.pair_flops, bandwidth, source)


def savings(bench: pd.DataFrame, cost: CostModel, shape: MoeShape, bandwidth: float) -> pd.DataFrame:
    """Per (batch, rule): measured saving over dense at that batch, next to the ideal bytes
    saving and the calibrated prediction of it; `share_of_ideal` = measured / ideal."""
    out = bench[["batch", "rule", "distinct_experts", "slots", "ms"]].copy()
    out["floor_ms"] = out["distinct_experts"] * shape.expert_bytes / bandwidth * 1e3
    out["predicted_ms"] = cost.routed_ms(out["distinct_experts"], out["slots"], shape.expert_bytes, shape.pair_flops)
    dense = out[out["rule"] == "dense"].set_index("batch")
    for col, ref in (("measured_saving", "ms"), ("ideal_saving", "floor_ms"), ("predicted_saving", "predicted_ms")):
        out[col] = 1 - out[ref] / out["batch"].map(dense[ref])
    out["share_of_ideal"] = out["measured_saving"] / out["ideal_saving"]
    out["prediction_error"] = out["predicted_ms"] / out["ms"] - 1
    return out


def layer_shape(shape) -> MoeShape:
    """The eager layer of a served model's MoE shape (specs.ModelShape)."""
    return MoeShape(hidden=shape.hidden, intermediate=shape.moe_inter, experts=shape.n_experts, top_k=shape.top_k)


def time_layer_here(shape, batches=(1, 4, 16), repeats: int = 15) -> pd.DataFrame:
    """The `this-machine` measurement: the served model's MoE layer shape (specs.ModelShape)
    timed on this CPU under dense and top-k rules (CPU_MOE_SCHEMA rows). One torch thread: on a
    shared machine a second thread mostly waits for a core, and the fit should see the layer,
    not the queue."""
    import torch

    moe = layer_shape(shape)
    rules = ["dense"] + [f"topk:{k}" for k in sorted({1, max(1, shape.top_k // 2)}) if k < shape.top_k]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bench_layer(EagerMoE(moe), list(batches), rules, calls=repeats)
    finally:
        torch.set_num_threads(threads)


def fit_layer(bench: pd.DataFrame, profile, shape, device: str) -> CostModel:
    """CostModel of time_layer_here's rows, fitted on each row's 10th percentile: a layer this
    small takes well under a scheduler time slice, so the median on a busy machine times the
    run queue; the fast calls time the layer."""
    moe = layer_shape(shape)
    calls = int(bench["calls"].iloc[0])
    return fit_cost_model(bench, "ms_p10", moe.expert_bytes, moe.pair_flops, profile.bandwidth,
                          f"{device}: eager MoE layer {moe.hidden}x{moe.intermediate}x{moe.experts} "
                          f"{moe.dtype}, 1 thread, p10 of {calls} calls, timed once for this machine",
                          expert_shape=(moe.hidden, moe.intermediate))  # fmt: skip
