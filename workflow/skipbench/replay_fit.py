"""The measured replay's stage functions, and the `this-machine` cost model checked against it.

The fit is made once per machine (replay_fit, cached under a machine key, not under the
variant list): it times the DENSE variant's replayed routing, as traced and under one rule
(top1: only each token's first router slot), at the replay's concurrency levels, and fits
skipbench.costmodel's terms on those rows with the machine's measured copy bandwidth. The
replay then predicts every variant from its distinct experts and kept pairs: dense's rows
are in-sample, every other variant's are held out, and their error is printed. Adding a
variant re-runs the replay, not the fit, so no other variant's prediction moves.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from skipbench.costmodel import CostModel, fit_cost_model
from skipbench.io import read_table, write_table
from skipbench.replay import (CPU_PATH, GPU_PATHS, REPLAY_SCHEMA, CpuEagerPath, ExpertShape, add_speedup,
                              not_run_rows, replay_cases, replay_table)  # fmt: skip
from skipbench.specs import machine_key
from skipbench.strategies import SkipRule

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
    from skipbench.engines import device_name
    from skipbench.specs import measure_profile

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


def fit_from_rows(fit: pd.DataFrame, shape: ExpertShape) -> CostModel:
    """CostModel per MoE layer from the fit rows (ms_per_step / layers)."""
    bench = fit.assign(batch=fit["concurrency"], rule=fit["variant"], slots=fit["pairs"],
                       ms=fit["ms_per_step"] / fit["layers"])  # fmt: skip
    row = fit.iloc[0]
    return fit_cost_model(bench, "ms", shape.expert_bytes, shape.pair_flops, float(row["bandwidth"]),
                          f"{row['device']} {row['path']} {row['expert_shape']}: replayed dense + {FIT_RULE}")  # fmt: skip


def predict(table: pd.DataFrame, cost: CostModel, shape: ExpertShape) -> pd.DataFrame:
    """predicted_ms (per step, L layers), held_out and prediction_error of measured rows."""
    out = table.copy()
    out["predicted_ms"] = cost.routed_ms(out["distinct_experts"], out["pairs"], shape.expert_bytes,
                                         shape.pair_flops) * out["layers"]  # fmt: skip
    out["held_out"] = out["variant"] != DENSE
    out["prediction_error"] = out["predicted_ms"] / out["ms_per_step"] - 1
    return out


def held_out_error(table: pd.DataFrame) -> pd.DataFrame:
    """Per path: median and max |error| of held-out measured rows, and how many."""
    t = table[table["held_out"] & table["prediction_error"].notna()]
    err = t["prediction_error"].abs()
    return err.groupby(t["path"]).agg(["median", "max", "count"]).reset_index()


def run_replay(trace_paths: dict[str, str], rules: dict[str, SkipRule], experts: int, concurrency: list[int],
               shape: ExpertShape, fit_path: str | None, out_path: str, steps: int = 4, repeats: int = 3, budget_s: float = 60.0,
               threads: int = 1, max_weight_mib: float = 4096) -> pa.Table:  # fmt: skip
    """The replay stage: every variant at every concurrency on cpu_eager (and the CUDA paths
    when a GPU is here, else rows saying they were not run), with speedups and this machine's
    predictions."""
    import torch

    from skipbench.engines import device_name

    t0 = time.monotonic()
    traces = {v: read_table(p).to_pandas() for v, p in trace_paths.items()}
    if why := too_big(shape, experts, max_weight_mib):
        frames = [not_run_rows(list(traces), concurrency, [CPU_PATH], device_name(), shape, why)]
    else:
        path = _cpu_path(shape, experts, concurrency, threads)
        frames = [replay_table(path, traces, rules, concurrency, shape, device_name(), steps, repeats, budget_s)]
    if torch.cuda.is_available():
        from skipbench.replay_gpu import gpu_paths

        for gpu in gpu_paths(shape, experts, max(concurrency)):
            frames.append(replay_table(gpu, traces, rules, concurrency, shape, device_name(), steps, repeats, budget_s))
    else:
        frames.append(not_run_rows(list(traces), concurrency, GPU_PATHS, device_name(), shape, "no CUDA device"))
    table = add_speedup(pd.concat(frames, ignore_index=True), DENSE)
    table["predicted_ms"], table["held_out"], table["prediction_error"] = np.nan, table["variant"] != DENSE, np.nan
    fit = read_table(fit_path, FIT_SCHEMA).to_pandas() if fit_path and os.path.exists(fit_path) else None
    if fit is not None and len(fit) >= 3 and not why:
        cost = fit_from_rows(fit, shape)
        cpu = table["path"] == CPU_PATH
        table.loc[cpu] = predict(table[cpu], cost, shape)
        for r in held_out_error(table).itertuples():
            log.info("held-out prediction error on %s (%s): median %.0f%%, max %.0f%% over %d rows", r.path,
                     cost.source, 100 * r.median, 100 * r.max, r.count)  # fmt: skip
    log.info("replay of %d variants done in %.0f s", len(traces), time.monotonic() - t0)
    return write_table(out_path, pa.Table.from_pandas(table[REPLAY_SCHEMA.names], preserve_index=False), REPLAY_SCHEMA)
