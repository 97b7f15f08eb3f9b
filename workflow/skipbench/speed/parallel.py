"""Routed-expert time of a decode step split over n devices, from the routing itself (stage: roofline).

Ours: no public tool computes expert-parallel skip speedups from real routing.

- tensor parallel (TP): every device holds 1/n of every expert; a step loads the union of the
  batch's kept experts on every device, at 1/n of their bytes and FLOPs. A skip saves time
  wherever it lowers the union.
- expert parallel (EP): device d holds experts [d E/n, (d+1) E/n) whole (contiguous
  placement, no redundant copies); a step's routed experts take as long as its BUSIEST
  device: max over d of that device's time for its distinct kept experts and pairs. A skip
  saves time only if it lowers that maximum; communication (dispatch/combine) is not
  modelled here.

Per-device loads come from traffic.step_traffic (the same continuous-batching replay as the
traffic table) with the kept mask restricted to each device's experts, so every variant's
own routing is timed. A batch_aware (OEA) variant keeps the masks its trace recorded here
(its per-batch recomputation is in the traffic table, not per device).
Time per device: a costmodel.CostModel where one covers the experts (whole experts: EP needs
no transfer; TP uses the slice's bytes and FLOPs), else the bytes floor max(bytes / bandwidth,
FLOPs / rate). Shapes: S steps, L layers, n devices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from skipbench.speed.costmodel import CostModel
from skipbench.speed.traffic import step_traffic

LAYOUTS = ("tp", "ep")


def device_loads(arrays: dict[str, np.ndarray], concurrency: int, n_devices: int, n_experts: int) -> pd.DataFrame:
    """One row per (step, layer, device): distinct kept experts and kept pairs on that device
    under EP placement (expert e on device e * n // E)."""
    if n_experts % n_devices:
        raise ValueError(f"{n_experts} experts do not split evenly over {n_devices} devices")
    device = arrays["ids"] * n_devices // n_experts  # N, K
    frames = []
    for d in range(n_devices):
        st = step_traffic(dict(arrays, kept=arrays["kept"] & (device == d)), concurrency)
        frames.append(st.assign(device=d))
    return pd.concat(frames, ignore_index=True)


def _routed_ms(distinct, pairs, expert_bytes: float, pair_flops: float, cost: CostModel | None,
               bandwidth: float, rate: float) -> np.ndarray:  # fmt: skip
    if cost is not None:
        return cost.routed_ms(distinct, pairs, expert_bytes, pair_flops)
    return np.maximum(np.asarray(distinct) * expert_bytes / bandwidth, np.asarray(pairs) * pair_flops / rate) * 1e3


def parallel_routed_ms(arrays: dict[str, np.ndarray], concurrency: int, n_devices: int, n_experts: int,
                       expert_bytes: float, pair_flops: float, cost: CostModel | None, bandwidth: float,
                       rate: float) -> dict[str, float]:  # fmt: skip
    """Mean routed-expert ms per (step, layer) under TP and EP, plus the EP load: mean
    distinct experts on the busiest device and on the average device."""
    loads = device_loads(arrays, concurrency, n_devices, n_experts)
    whole = loads.groupby(["step", "layer"])[["distinct", "slots"]].sum()  # the union: devices hold disjoint experts
    tp = _routed_ms(whole["distinct"], whole["slots"], expert_bytes / n_devices, pair_flops / n_devices, cost,
                    bandwidth, rate)  # fmt: skip
    loads["ms"] = _routed_ms(loads["distinct"], loads["slots"], expert_bytes, pair_flops, cost, bandwidth, rate)
    per_step = loads.groupby(["step", "layer"])
    return dict(tp_ms=float(np.mean(tp)), ep_ms=float(per_step["ms"].max().mean()),
                ep_busiest_distinct=float(per_step["distinct"].max().mean()),
                ep_mean_distinct=float(per_step["distinct"].mean().mean()))  # fmt: skip


def parallel_speedups(variants: dict[str, dict[str, np.ndarray]], concurrency: list[int], n_devices: int,
                      n_experts: int, expert_bytes: float, pair_flops: float, cost: CostModel | None,
                      bandwidth: float, rate: float, dense: str = "dense") -> pd.DataFrame:  # fmt: skip
    """One row per (variant, concurrency, layout): routed ms per layer and step, the speedup of
    routed-expert time over dense's at the same concurrency and layout, and the EP load."""
    rows = []
    for name, arrays in variants.items():
        for c in concurrency:
            r = parallel_routed_ms(arrays, c, n_devices, n_experts, expert_bytes, pair_flops, cost, bandwidth, rate)
            for layout in LAYOUTS:
                rows.append(dict(variant=name, concurrency=c, layout=layout, n_devices=n_devices,
                                 routed_ms=r[f"{layout}_ms"], ep_busiest_distinct=r["ep_busiest_distinct"],
                                 ep_mean_distinct=r["ep_mean_distinct"]))  # fmt: skip
    out = pd.DataFrame(rows)
    ref = out[out["variant"] == dense].set_index(["concurrency", "layout"])["routed_ms"]
    out["speedup"] = out.set_index(["concurrency", "layout"]).index.map(ref).to_numpy() / out["routed_ms"]
    return out


def synthetic_deepseek_routing(samples: int, positions: int, layers: int, keep_k: int, seed: int = 0,
                               config: dict | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """traffic.trace_arrays-shaped routing with no trace behind it: standard-normal router
    logits through the model's own selection (routing.route, checked against transformers'
    router; DeepSeek-V3 by default: sigmoid, 4 of 8 groups, top-8, a zero selection bias), the
    router re-run with K' = keep_k (router_topk) marking which slots are kept. Uniform by
    construction: real routing is skewed, so busiest-device loads here are a lower estimate."""
    import torch

    from skipbench.model.adapters import router_spec, routing_of
    from skipbench.skip.routing import route
    from skipbench.speed.specs import DEEPSEEK_V3_CONFIG

    config = config or DEEPSEEK_V3_CONFIG
    r = routing_of(config)
    spec = router_spec(config, r.moe_layers[0], torch.zeros(r.experts) if r.selection_bias else None)
    n = samples * positions * layers
    logits = torch.randn(n, r.experts, generator=torch.Generator().manual_seed(seed))  # N, E
    ids, weights, kept = route(logits, spec, spec.topk_group, top_k=keep_k)  # N, K each
    sample, position, layer = np.unravel_index(np.arange(n), (samples, positions, layers))
    return dict(sample=sample, position=position, layer=layer, ids=ids.numpy().astype(np.int64), kept=kept.numpy(),
                weights=weights.numpy().astype(np.float32))  # fmt: skip
