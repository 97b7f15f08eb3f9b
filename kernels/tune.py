"""Tile-config search for the MoE kernels, per decode batch size, on the GPU at hand.

A small coordinate search, not a grid: for each block_m, first the gate/up tile (down
fixed), then the down tile (gate/up at its best). Each candidate is first run against
the float64 reference (`check`, e.g. reference_checker): a config that computes a wrong
answer is never timed and never chosen. Then it is timed as the whole layer step (all
three launches) replayed from a CUDA graph with the L2 flushed (triton.testing.do_bench),
so the number is the kernels' and not the launch path's. A time budget bounds the
search; the best config found so far wins when it runs out.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .moe_triton import GemmConfig, MoeConfig, default_config
from .reference import BLOCK

log = logging.getLogger(__name__)

Timer = Callable[[Callable[[], object]], float]  # fn -> milliseconds per call
Check = Callable[[MoeConfig], float]  # config -> max relative error against float64 (inf: failed to run)


@dataclass(frozen=True)
class Tuned:
    tokens: int  # batch the config was tuned at; it serves batches up to this size
    config: MoeConfig
    ms: float  # measured layer time at that batch


def gemm_space(fp8: bool, reduce_dim: int, out_dim: int, gate_up: bool = False) -> list[GemmConfig]:
    """Tile candidates for one GEMM: FP8 steps K by its 128-wide scale blocks, and its
    gate/up tile is one 128-column scale group of h (moe_triton.config_misfit)."""
    block_ks = (BLOCK,) if fp8 else (64, 128)
    block_ns = (BLOCK,) if fp8 and gate_up else (32, 64, 128)
    return [
        GemmConfig(bn, bk, 4, stages)  # 4 warps: one warpgroup per wgmma tile (static_check: 8 needs more issue)
        for bn in block_ns
        for bk in block_ks
        for stages in (3, 4)
        if out_dim % bn == 0 and reduce_dim % bk == 0
    ]


def block_m_space(tokens: int, slots: int, experts: int) -> tuple[int, ...]:
    """Rows per block worth trying: 8 is the narrowest wgmma, 16 the next; larger only
    once experts get many rows."""
    rows_per_expert = tokens * slots / experts
    return tuple(m for m in (8, 16, 32, 64) if m <= 16 or rows_per_expert >= m / 2)


def cuda_graph_timer(fn: Callable[[], object]) -> float:
    """Median ms of fn replayed from a CUDA graph, L2 flushed before each replay."""
    import triton.testing

    fn()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return float(triton.testing.do_bench(graph.replay, warmup=10, rep=40, return_mode="median"))


def tune(
    step: Callable[[MoeConfig], Callable[[], object]],  # config -> a call running one layer step
    fp8: bool,
    hidden: int,
    intermediate: int,
    tokens: int,
    slots: int,
    experts: int,
    check: Check,
    tolerance: float,
    timer: Timer = cuda_graph_timer,
    budget_s: float = 60.0,
) -> Tuned:
    """Best MoeConfig found for this batch within budget_s among those within `tolerance`
    of float64 (the default config is always checked and timed); raises when none is."""
    deadline = time.monotonic() + budget_s
    timings: dict[MoeConfig, float] = {}

    def measure(cfg: MoeConfig) -> float:
        if cfg not in timings:
            try:
                err = check(cfg)
                if not err < tolerance:  # NaN fails too
                    log.warning("config %s refused: rel err %.2e vs float64 (tol %.0e)", cfg.to_json(), err, tolerance)
                    timings[cfg] = float("inf")
                else:
                    timings[cfg] = timer(step(cfg))
            except Exception as exc:  # e.g. out of shared memory for this tile on this GPU
                log.info("config %s failed: %s", cfg.to_json(), exc)
                timings[cfg] = float("inf")
        return timings[cfg]

    base = default_config(fp8)
    measure(base)
    for block_m in block_m_space(tokens, slots, experts):
        best_gu = base.gate_up
        for g in gemm_space(fp8, hidden, intermediate, gate_up=True):
            if time.monotonic() > deadline:
                break
            if measure(MoeConfig(block_m, g, base.down)) < measure(MoeConfig(block_m, best_gu, base.down)):
                best_gu = g
        for d in gemm_space(fp8, intermediate, hidden):
            if time.monotonic() > deadline:
                break
            measure(MoeConfig(block_m, best_gu, d))
    best = min(timings, key=timings.get)
    if timings[best] == float("inf"):
        raise RuntimeError(f"tokens {tokens}: no tile config ran correctly ({len(timings)} tried)")
    log.info("tokens %d: best of %d configs %.4f ms (default %.4f ms): %s", tokens, len(timings), timings[best],
             timings[base], best.to_json())  # fmt: skip
    return Tuned(tokens, best, timings[best])


def configs_to_json(tuned: list[Tuned]) -> str:
    return json.dumps([{"tokens": t.tokens, "ms": t.ms, "config": json.loads(t.config.to_json())} for t in tuned])


def configs_from_json(text: str) -> list[Tuned]:
    return [Tuned(d["tokens"], MoeConfig.from_json(json.dumps(d["config"])), d["ms"]) for d in json.loads(text)]


def config_for(tuned: list[Tuned], tokens: int) -> MoeConfig | None:
    """Config tuned at the smallest batch >= tokens (the largest beyond the table); None
    (the kernel's default for the weights' dtype) when nothing was tuned."""
    if not tuned:
        return None
    ordered = sorted(tuned, key=lambda t: t.tokens)
    return next((t.config for t in ordered if t.tokens >= tokens), ordered[-1].config)


def random_layer(experts: int, hidden: int, intermediate: int, kind: str, device, seed: int = 0, chunk: int = 8):
    """(w13 [E, 2I, H], w2 [E, H, I], scales {} or {w13_scale, w2_scale}) of one random MoE layer,
    built on the device a few experts at a time (a 256-expert FP8 layer is 11 GB; its fp32
    staging would be 45). kind: fp8 (128x128 block scales) or bf16."""
    from .reference import quant_blocks

    gen = torch.Generator(device=device).manual_seed(seed)
    fp8 = kind == "fp8"
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    w13 = torch.empty(experts, 2 * intermediate, hidden, dtype=dtype, device=device)
    w2 = torch.empty(experts, hidden, intermediate, dtype=dtype, device=device)
    scales = {}
    if fp8:
        scales = {"w13_scale": torch.empty(experts, 2 * intermediate // BLOCK, hidden // BLOCK, device=device),
                  "w2_scale": torch.empty(experts, hidden // BLOCK, intermediate // BLOCK, device=device)}
    for e0 in range(0, experts, chunk):
        e1 = min(e0 + chunk, experts)
        for w, name, fan_in in ((w13, "w13_scale", hidden), (w2, "w2_scale", intermediate)):
            block = torch.randn(e1 - e0, *w.shape[1:], generator=gen, device=device) / fan_in**0.5
            if fp8:
                w[e0:e1], scales[name][e0:e1] = quant_blocks(block)
            else:
                w[e0:e1] = block
    return w13, w2, scales


def reference_checker(w13, w2, scales: dict, tokens: int = 67, seed: int = 0) -> Check:
    """Check for tune(): one fixed routed batch on the first few experts of the tuning layer
    (expert 0 gets every token: blocks fill up for every block_m tried), its float64
    reference computed once; check(config) = max relative error of moe_triton at config."""
    from .moe_triton import moe_triton
    from .reference import moe_reference

    dev, (e, _, h) = w13.device, w13.shape
    k = min(e, 4)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(tokens, h, generator=gen, device=dev).bfloat16()
    ids = torch.stack([torch.randperm(k, generator=gen, device=dev) for _ in range(tokens)])  # T, k: experts 0..k-1
    w = torch.rand(tokens, k, generator=gen, device=dev)
    keep = torch.rand(tokens, k, generator=gen, device=dev) < 0.7
    keep[ids == 0] = True
    fp8 = bool(scales)
    ref = moe_reference(x, w13, w2, ids, w, keep, **scales, quantize_activations=fp8, compute_dtype=torch.float64)

    def check(config: MoeConfig) -> float:
        out = moe_triton(x, w13, w2, ids, w, keep, **scales, config=config)
        return float((out.double() - ref).abs().max() / ref.abs().max())

    return check
