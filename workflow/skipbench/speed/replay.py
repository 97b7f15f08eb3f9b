"""Measured replay: every variant's own routing timed on a real skip path of this device.

traffic.py counts what the refill replay's decode steps would load; this module times them.
For each (variant, concurrency) it takes the steps of the same continuous-batching replay
(traffic.replay_rows: c decode tokens a step, the variant's keep masks, batch_aware
recomputed per replayed batch), samples a few of them evenly, and runs the routed experts of
every MoE layer of each sampled step through a path where a skipped expert is never read:

    cpu_eager   skipbench.speed.cpu_moe.EagerMoE, the per-expert loop (only experts a kept slot selects)
    grouped_mm  torch._grouped_mm over the kept (token, slot) rows, skipped rows sort past the
                last group (kernels/baselines.py); CUDA only
    triton_v2   the project's skip kernel (kernels/moe_triton.py), bf16 weights; CUDA only

Routing (E experts, K slots, groups) is the traced model's; the expert width is the model's
own or `expert_shape` (hidden x intermediate), so a tiny model's routing can be timed at a
width whose cost is memory traffic. One layer's weights serve every MoE layer (E experts of
2048x1408 float32 weigh 35 MB each: all layers' would not fit a shared machine); a step is
the sum of its layers, each timed with its own routing. Variants are interleaved (each
sampled step runs under every variant in turn, order reversed every other pass), repeats
give the median; a time budget stops the repeats early (at least one full pass).
Shapes: M replayed rows, K slots, B = c tokens a step, H hidden, I intermediate, L MoE layers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from skipbench.skip.strategies import SkipRule
from skipbench.speed.cpu_moe import MoeShape
from skipbench.speed.traffic import replay_rows, trace_arrays

log = logging.getLogger(__name__)

CPU_PATH = "cpu_eager"
GPU_PATHS = ("grouped_mm", "triton_v2")

# One row per (variant, concurrency, path). Written by write_replay.
REPLAY_SCHEMA = pa.schema(
    [
        ("variant", pa.string()),  # skip variant (or a fit rule of replay_fit: dense, top1)
        ("concurrency", pa.int32()),  # c: decode tokens per step (refill replay)
        ("path", pa.string()),  # cpu_eager, grouped_mm, triton_v2
        ("device", pa.string()),  # engines.device_name() of the machine that timed it
        ("expert_shape", pa.string()),  # "HxI dtype" of the timed experts, e.g. "2048x1408 float32"
        ("layers", pa.int16()),  # L: MoE layers per step (each timed with its own routing)
        ("steps", pa.int32()),  # sampled decode steps timed
        ("repeats", pa.int32()),  # passes over the sampled steps (median taken)
        ("ms_per_step", pa.float64()),  # routed experts of all L layers, one step: median over repeats of the step mean
        ("ms_p10", pa.float64()),  # 10th percentile over repeats of the step mean
        ("ms_p90", pa.float64()),  # 90th percentile
        ("distinct_experts", pa.float64()),  # distinct kept experts per layer and step: mean over sampled steps
        ("pairs", pa.float64()),  # kept (token, slot) pairs per layer and step: mean
        ("multi_token_experts", pa.float64()),  # of the distinct experts, those with >= 2 kept pairs: mean
        ("speedup", pa.float64()),  # dense ms_per_step / this one, same concurrency and path
        ("predicted_ms", pa.float64()),  # this-machine cost model (replay_fit) x L; null where no fit
        ("held_out", pa.bool_()),  # True: the variant's routing was not in the fit
        ("prediction_error", pa.float64()),  # predicted_ms / ms_per_step - 1
        ("status", pa.string()),  # "measured", or why not (e.g. "not run: no CUDA device")
    ]
)


@dataclass(frozen=True)
class ExpertShape:
    hidden: int  # H
    intermediate: int  # I
    dtype: str = "float32"  # torch dtype name of weights and activations

    @classmethod
    def parse(cls, spec: str | None, model_hidden: int, model_inter: int, dtype: str) -> "ExpertShape":
        """`expert_shape` config value "HxI" (None: the model's own width)."""
        if not spec:
            return cls(model_hidden, model_inter, dtype)
        h, sep, i = (part.strip() for part in str(spec)[:32].lower().partition("x"))
        if not (sep and h.isdigit() and i.isdigit() and 0 < int(h) <= 65536 and 0 < int(i) <= 65536):
            raise ValueError(f"expert_shape must be 'HIDDENxINTERMEDIATE' (each 1..65536), got {spec!r}")
        return cls(int(h), int(i), dtype)

    @classmethod
    def of_config(cls, replay_cfg: dict, model) -> "ExpertShape":
        """The `replay:` config block's width for a served model (specs.ModelShape)."""
        return cls.parse(replay_cfg["expert_shape"], model.hidden, model.moe_inter, replay_cfg["dtype"])

    @property
    def label(self) -> str:
        return f"{self.hidden}x{self.intermediate} {self.dtype}"

    @property
    def layer(self) -> MoeShape:
        """cpu_moe's shape of these experts (its byte and FLOP counts; E and K unused)."""
        return MoeShape(hidden=self.hidden, intermediate=self.intermediate, dtype=self.dtype)

    @property
    def expert_bytes(self) -> int:
        return self.layer.expert_bytes

    @property
    def pair_flops(self) -> int:
        return self.layer.pair_flops


Routing = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids, weights, kept: [B, K] each


def sampled_steps(rows: dict[str, np.ndarray], n_steps: int) -> list[list[Routing]]:
    """`n_steps` replay steps spread evenly over the replay (first and last included), each
    as its MoE layers' routings in layer order."""
    steps = np.unique(rows["step"])
    pick = np.unique(steps[np.linspace(0, len(steps) - 1, min(n_steps, len(steps))).round().astype(int)])
    out = []
    for s in pick:
        at = rows["step"] == s
        out.append([(rows["ids"][m], rows["weights"][m], rows["kept"][m])
                    for m in (at & (rows["layer"] == layer) for layer in np.unique(rows["layer"][at]))])  # fmt: skip
    return out


class CpuEagerPath:
    """The per-expert loop on CPU (cpu_moe.EagerMoE), one torch thread by default: on a
    shared machine a second thread mostly waits for a core."""

    name = CPU_PATH

    def __init__(self, shape: ExpertShape, experts: int, max_batch: int, seed: int = 0):
        import torch

        from skipbench.speed.cpu_moe import EagerMoE

        self.moe = EagerMoE(MoeShape(shape.hidden, shape.intermediate, experts, 1, shape.dtype), seed)
        self.x = torch.randn(max_batch, shape.hidden, generator=torch.Generator().manual_seed(seed)).to(
            getattr(torch, shape.dtype))

    def prepare(self, routing: Routing):
        return routing

    def run(self, routing: Routing) -> None:
        ids, w, kept = routing
        self.moe.forward(self.x[: len(ids)], ids, w, kept)

    def sync(self) -> None:
        pass


def time_cases(path, cases: dict[str, list[list[Routing]]], repeats: int, deadline: float) -> dict[str, list[float]]:
    """Per case: mean step ms of each completed pass. Every pass runs each sampled step under
    every case in turn (interleaved, order reversed every other step), so drift and other
    processes' load hit all cases alike; passes after the first stop at `deadline`."""
    keys = list(cases)
    prepared = {k: [[path.prepare(r) for r in step] for step in steps] for k, steps in cases.items()}
    for routing in prepared[keys[0]][0]:  # warm-up: allocator, caches of the first shapes
        path.run(routing)
    path.sync()
    passes: dict[str, list[float]] = {k: [] for k in keys}
    for rep in range(repeats):
        if rep and time.monotonic() > deadline:
            log.warning("replay: time budget reached after %d of %d passes", rep, repeats)
            break
        totals = dict.fromkeys(keys, 0.0)
        n = len(prepared[keys[0]])
        for i in range(n):
            for k in keys if (rep + i) % 2 == 0 else keys[::-1]:
                t0 = time.perf_counter()
                for routing in prepared[k][i]:
                    path.run(routing)
                path.sync()
                totals[k] += (time.perf_counter() - t0) * 1e3
        for k in keys:
            passes[k].append(totals[k] / n)
    return passes


def _counts(steps: list[list[Routing]]) -> dict:
    """Means per (step, layer) of distinct kept experts, kept pairs and experts with >= 2 kept
    pairs (a one-token expert is a matrix-vector product, cheaper per byte on a CPU), and L."""
    per = np.array([(len(c), c.sum(), (c >= 2).sum()) for step in steps for ids, _, kept in step
                    for c in [np.unique(ids[kept], return_counts=True)[1]]], float).reshape(-1, 3)  # fmt: skip
    distinct, pairs, multi = per.mean(axis=0)
    return dict(distinct_experts=distinct, pairs=pairs, multi_token_experts=multi, layers=max(len(s) for s in steps))


def replay_cases(traces: dict[str, pd.DataFrame], rules: dict[str, SkipRule | None], concurrency: int,
                 n_steps: int) -> dict[str, list[list[Routing]]]:  # fmt: skip
    """{variant: sampled steps} at one concurrency, from each variant's trace."""
    return {v: sampled_steps(replay_rows(trace_arrays(t), concurrency, rules.get(v)), n_steps)
            for v, t in traces.items()}  # fmt: skip


def replay_table(path, traces: dict[str, pd.DataFrame], rules: dict[str, SkipRule | None], concurrency: list[int],
                 shape: ExpertShape, device: str, n_steps: int = 4, repeats: int = 3, budget_s: float = 60.0,
                 cases_fn=replay_cases) -> pd.DataFrame:  # fmt: skip
    """REPLAY_SCHEMA rows (without speedup and prediction) of every variant at every
    concurrency on one path. The budget is shared by the concurrency levels in order."""
    t_end = time.monotonic() + budget_s
    rows = []
    for i, c in enumerate(concurrency):
        cases = cases_fn(traces, rules, c, n_steps)
        # each level gets an equal share of what is left
        deadline = time.monotonic() + (t_end - time.monotonic()) / (len(concurrency) - i)
        passes = time_cases(path, cases, repeats, deadline)
        for v, steps in cases.items():
            t = passes[v]
            rows.append(dict(variant=v, concurrency=c, path=path.name, device=device, expert_shape=shape.label,
                             steps=len(steps), repeats=len(t), ms_per_step=float(np.median(t)),
                             ms_p10=float(np.percentile(t, 10)), ms_p90=float(np.percentile(t, 90)),
                             status="measured", **_counts(steps)))  # fmt: skip
            log.info("replay %s c=%d %s: %.2f experts/layer, %.2f ms/step (%d passes)", v, c, path.name,
                     rows[-1]["distinct_experts"], rows[-1]["ms_per_step"], len(t))  # fmt: skip
    return pd.DataFrame(rows)


def not_run_rows(variants: list[str], concurrency: list[int], paths, device: str, shape: ExpertShape,
                 why: str) -> pd.DataFrame:  # fmt: skip
    """Rows of paths this machine cannot run, saying why (no number is made up)."""
    return pd.DataFrame([dict(variant=v, concurrency=c, path=p, device=device, expert_shape=shape.label, layers=0,
                              steps=0, repeats=0, status=f"not run: {why}")
                         for p in paths for c in concurrency for v in variants])  # fmt: skip


def add_speedup(table: pd.DataFrame, dense: str = "dense") -> pd.DataFrame:
    """speedup = dense's ms_per_step / the variant's, same concurrency and path."""
    ref = table[table["variant"] == dense].set_index(["concurrency", "path"])["ms_per_step"]
    key = pd.MultiIndex.from_frame(table[["concurrency", "path"]])
    out = table.copy()
    out["speedup"] = ref.reindex(key).to_numpy() / out["ms_per_step"].to_numpy()
    return out
