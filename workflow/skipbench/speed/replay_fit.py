"""The measured replay's stage functions, and the `this-machine` cost model checked against it.

The fit is made once per machine (replay_fit, cached under a machine key, not under the
variant list): it times the DENSE variant's replayed routing, as traced and under one rule
(top1: only each token's first router slot), at the replay's concurrency levels, and fits
ReplayCost (skipbench.speed.costmodel's terms and a matrix-matrix term) on those rows with the
machine's measured copy bandwidth. The replay then predicts every variant from its
distinct experts and kept pairs: dense's rows are in-sample, every other variant's are held
out, and their error is printed. Adding a variant re-runs the replay, not the fit, so no
other variant's prediction moves. The fit holds for the path, width and machine it was timed
on: the roofline's `this-machine` profile (the served model's own width) does not take it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from skipbench.io import read_table, write_table
from skipbench.speed.replay import (CPU_PATH, GPU_PATHS, REPLAY_SCHEMA, CpuEagerPath, ExpertShape, add_speedup,
                              not_run_rows, replay_cases, replay_table)  # fmt: skip
from skipbench.speed.specs import machine_key
from skipbench.skip.strategies import SkipRule

log = logging.getLogger(__name__)

DENSE = "dense"
FIT_RULE = "top1"  # the one rule beside dense: each token keeps its first router slot

# The machine's fit rows: REPLAY_SCHEMA rows of dense and top1 (no prediction), plus what the fit needs.
FIT_SCHEMA = pa.schema(
    list(REPLAY_SCHEMA)
    + [
        ("bandwidth", pa.float64()),  # measured copy bandwidth of this machine, bytes/s (given to the fit)
        ("machine", pa.string()),  # machine_key() of the machine that timed the rows
    ]
)


def fit_cases(traces, rules, concurrency: int, n_steps: int):
    """replay_cases of dense's trace, as traced and under FIT_RULE."""
    dense = replay_cases({DENSE: traces[DENSE]}, {}, concurrency, n_steps)[DENSE]
    first = [[(ids, w, kept & (np.arange(kept.shape[1]) == 0)) for ids, w, kept in step] for step in dense]
    return {DENSE: dense, FIT_RULE: first}


def too_big(shape: ExpertShape, experts: int, max_weight_mib: float) -> str | None:
    """Why one layer's E experts at this width do not fit the configured memory (None: they do)."""
    mib = experts * shape.expert_bytes / 2**20
    return f"{experts} experts x {shape.label} = {mib:.0f} MiB > replay.max_weight_mib" if mib > max_weight_mib else None


def _cpu_path(shape: ExpertShape, experts: int, concurrency: list[int], threads: int) -> CpuEagerPath:
    import torch

    torch.set_num_threads(threads)
    return CpuEagerPath(shape, experts, max(concurrency))


def run_fit(dense_trace: str, experts: int, concurrency: list[int], shape: ExpertShape, out_path: str, steps: int = 4,
            repeats: int = 3, budget_s: float = 20.0, threads: int = 1, copy_mib: int = 256,
            max_weight_mib: float = 4096) -> pa.Table:  # fmt: skip
    """The machine's fit rows (FIT_SCHEMA): dense's replayed routing and top1, timed on cpu_eager
    (no rows when the layer is over `max_weight_mib`: the replay then predicts nothing)."""
    from skipbench.infer.engines import device_name
    from skipbench.speed.specs import measure_profile

    if why := too_big(shape, experts, max_weight_mib):
        log.warning("replay fit not timed: %s", why)
        return write_table(out_path, FIT_SCHEMA.empty_table(), FIT_SCHEMA)
    traces = {DENSE: read_table(dense_trace).to_pandas()}
    path = _cpu_path(shape, experts, concurrency, threads)
    rows = add_speedup(replay_table(path, traces, {}, concurrency, shape, device_name(), steps, repeats, budget_s,
                                    fit_cases), DENSE)  # fmt: skip
    rows["predicted_ms"], rows["held_out"], rows["prediction_error"] = np.nan, False, np.nan
    rows["bandwidth"] = measure_profile(copy_mib=copy_mib, matmul_n=256, repeats=3).bandwidth
    rows["machine"] = machine_key()
    return write_table(out_path, pa.Table.from_pandas(rows, preserve_index=False), FIT_SCHEMA)


@dataclass(frozen=True)
class ReplayCost:
    """This machine's routed-expert time per MoE layer and step on the replay's path (ours):

        ms = layer_ms + distinct * (expert_ms + expert_bytes / bandwidth)
           + multi * gemm_ms + pairs * pair_flops * ms_per_tflop / 1e12

    skipbench.speed.costmodel's terms plus `gemm_ms`, per expert with >= 2 kept pairs: one pair is a
    matrix-vector product that streams the weights once, two or more a matrix-matrix product
    that the CPU's BLAS packs first (on the 2-core EPYC: about twice the time per expert).
    Fitted by non-negative least squares on relative error (rows weighted by 1 / ms)."""

    layer_ms: float
    expert_ms: float
    gemm_ms: float
    ms_per_tflop: float
    bandwidth: float  # measured copy bandwidth, bytes/s (given, not fitted)
    source: str
    in_sample_error: float  # max |fitted / measured - 1| over the fit rows
    lobo_error: float  # max of the same over each concurrency level left out of the fit (nan: < 2 levels)

    def layer_ms_of(self, distinct, multi, pairs, shape: ExpertShape) -> np.ndarray:
        return (self.layer_ms + np.asarray(distinct, float) * (self.expert_ms + shape.expert_bytes / self.bandwidth * 1e3)
                + np.asarray(multi, float) * self.gemm_ms
                + np.asarray(pairs, float) * shape.pair_flops * self.ms_per_tflop / 1e12)  # fmt: skip


def _solve(fit: pd.DataFrame, shape: ExpertShape, bandwidth: float) -> np.ndarray:
    from skipbench.speed.costmodel import _nnls

    ms = (fit["ms_per_step"] / fit["layers"]).to_numpy(float)  # R rows, per layer
    d, m, p = (fit[c].to_numpy(float) for c in ("distinct_experts", "multi_token_experts", "pairs"))
    x = np.stack([np.ones_like(ms), d, m, p * shape.pair_flops / 1e12], axis=1)  # R, 4
    y = ms - d * shape.expert_bytes / bandwidth * 1e3
    return _nnls(x / ms[:, None], y / ms)  # relative error


def fit_from_rows(fit: pd.DataFrame, shape: ExpertShape) -> ReplayCost:
    """ReplayCost from the machine's fit rows, with its in-sample and leave-one-concurrency-out errors."""
    fit = fit[fit["status"] == "measured"]
    if len(fit) < 3:
        raise ValueError(f"the replay fit needs >= 3 measured rows, got {len(fit)}")
    row, bw = fit.iloc[0], float(fit["bandwidth"].iloc[0])

    def model(coef, source="", err=np.nan, lobo=np.nan):
        return ReplayCost(*map(float, coef), bw, source, err, lobo)

    def error(cost, rows):
        got = cost.layer_ms_of(rows["distinct_experts"], rows["multi_token_experts"], rows["pairs"], shape)
        return float(np.max(np.abs(got * rows["layers"] / rows["ms_per_step"] - 1)))

    cost = model(_solve(fit, shape, bw))
    levels = sorted(set(fit["concurrency"]))
    lobo = max((error(model(_solve(fit[fit["concurrency"] != c], shape, bw)), fit[fit["concurrency"] == c])
                for c in levels), default=np.nan) if len(levels) > 1 else np.nan  # fmt: skip
    err = error(cost, fit)
    source = (f"{row['device']} {row['path']} {row['expert_shape']}: replayed {DENSE} + {FIT_RULE}, "
              f"fit within {100 * err:.0f}% in-sample, {100 * lobo:.0f}% leaving one batch out")  # fmt: skip
    log.info("replay cost model (%s): %.4f ms/layer + %.4f ms/expert + %.4f ms/multi-token expert + "
             "%.4f ms/TFLOP + bytes at %.3g B/s", source, cost.layer_ms, cost.expert_ms, cost.gemm_ms,
             cost.ms_per_tflop, bw)  # fmt: skip
    return model([cost.layer_ms, cost.expert_ms, cost.gemm_ms, cost.ms_per_tflop], source, err, lobo)


def predict(table: pd.DataFrame, cost: ReplayCost, shape: ExpertShape) -> pd.DataFrame:
    """predicted_ms (per step, L layers), held_out and prediction_error of measured rows."""
    out = table.copy()
    out["predicted_ms"] = cost.layer_ms_of(out["distinct_experts"], out["multi_token_experts"], out["pairs"],
                                           shape) * out["layers"]  # fmt: skip
    out["held_out"] = out["variant"] != DENSE
    out["prediction_error"] = out["predicted_ms"] / out["ms_per_step"] - 1
    return out


def held_out_error(table: pd.DataFrame) -> pd.DataFrame:
    """Per path, over held-out measured rows: median, max and count of |error| of the speedup
    over dense (predicted dense ms / predicted variant ms against the measured speedup, what the
    figures show), and the median |error| of the ms per step itself (`ms_median`).

    The fit is kept per machine while the replay is timed anew, so a change of load between the
    two moves every ms prediction alike, dense's too; the speedup cancels it."""
    t = table[table["prediction_error"].notna()]
    dense = t[t["variant"] == DENSE].set_index(["path", "concurrency"])["predicted_ms"]
    t = t[t["held_out"]]
    predicted = pd.Series(list(zip(t["path"], t["concurrency"])), index=t.index).map(dense) / t["predicted_ms"]
    err = (predicted / t["speedup"] - 1).abs()
    out = err.groupby(t["path"]).agg(["median", "max", "count"])
    out["ms_median"] = t["prediction_error"].abs().groupby(t["path"]).median()
    return out.reset_index()


def run_replay(trace_paths: dict[str, str], rules: dict[str, SkipRule], experts: int, concurrency: list[int],
               shape: ExpertShape, fit_path: str | None, out_path: str, steps: int = 4, repeats: int = 3,
               budget_s: float = 60.0, threads: int = 1, max_weight_mib: float = 4096) -> pa.Table:  # fmt: skip
    """The replay stage: every variant at every concurrency on cpu_eager (and the CUDA paths
    when a GPU is here, else rows saying they were not run), with speedups and this machine's
    predictions."""
    import torch

    from skipbench.infer.engines import device_name

    t0 = time.monotonic()
    traces = {v: read_table(p).to_pandas() for v, p in trace_paths.items()}
    if why := too_big(shape, experts, max_weight_mib):
        frames = [not_run_rows(list(traces), concurrency, [CPU_PATH], device_name(), shape, why)]
    else:
        path = _cpu_path(shape, experts, concurrency, threads)
        frames = [replay_table(path, traces, rules, concurrency, shape, device_name(), steps, repeats, budget_s)]
    if torch.cuda.is_available():
        from skipbench.speed.replay_gpu import gpu_paths

        for gpu in gpu_paths(shape, experts, max(concurrency)):
            frames.append(replay_table(gpu, traces, rules, concurrency, shape, device_name(), steps, repeats, budget_s))
    else:
        frames.append(not_run_rows(list(traces), concurrency, GPU_PATHS, device_name(), shape, "no CUDA device"))
    table = add_speedup(pd.concat(frames, ignore_index=True), DENSE)
    table["predicted_ms"], table["held_out"], table["prediction_error"] = np.nan, table["variant"] != DENSE, np.nan
    fit = read_table(fit_path, FIT_SCHEMA).to_pandas() if fit_path and os.path.exists(fit_path) else None
    if fit is not None and len(fit) and set(fit["machine"]) != {machine_key()}:
        log.warning("replay fit %s was timed on %s, not on this machine (%s): no predictions", fit_path,
                    sorted(set(fit["machine"])), machine_key())  # fmt: skip
        fit = None
    if fit is not None and len(fit) >= 3 and not why:
        cost = fit_from_rows(fit, shape)
        cpu = table["path"] == CPU_PATH
        table.loc[cpu] = predict(table[cpu], cost, shape)
        for r in held_out_error(table).itertuples():
            log.info("held-out error of the predicted speedup on %s (%s): median %.0f%%, max %.0f%% over %d rows "
                     "(of the ms per step: median %.0f%%)", r.path, cost.source, 100 * r.median, 100 * r.max, r.count,
                     100 * r.ms_median)  # fmt: skip
    log.info("replay of %d variants done in %.0f s", len(traces), time.monotonic() - t0)
    return write_table(out_path, pa.Table.from_pandas(table.reindex(columns=REPLAY_SCHEMA.names), preserve_index=False),
                       REPLAY_SCHEMA)  # fmt: skip
