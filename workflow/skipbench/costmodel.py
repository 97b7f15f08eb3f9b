"""Calibrated cost of one MoE layer's routed experts per decode step, fitted from measurements.

The roofline's bytes floor (distinct experts x bytes / bandwidth) is what an ideal kernel
would reach; today's kernels do not (DESIGN.md section 5: on an H200 one DeepSeek-V3 layer
at batch 1 takes 0.89 ms at top-8 against a 0.17 ms floor). The calibrated model adds the
terms measurements show, per MoE layer and step:

    ms = layer_ms                                   fixed: launches, routing, sync
       + distinct * (expert_ms + expert_bytes / bandwidth)   per loaded expert
       + pairs * pair_flops / rate                  per kept (token, slot) pair

`bandwidth` is the measured copy bandwidth of the device (given, not fitted: at one expert
shape it cannot be told apart from `expert_ms`); layer_ms, expert_ms and 1/rate are fitted
by non-negative least squares on measured rows (distinct experts, pairs, ms). A profile
carries the result with the file it came from (config/hardware/*.yaml `calibration:`).
Shapes: R measured rows.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# columns a calibration table needs (kernels/bench.py kernel_bench.csv, benchmarks/cpu_moe_layer.py)
BENCH_COLUMNS = ("batch", "rule", "distinct_experts", "slots")


@dataclass(frozen=True)
class CostModel:
    layer_ms: float  # per MoE layer and step
    expert_ms: float  # per loaded expert, on top of its bytes / bandwidth
    bandwidth: float  # bytes/s the kernels stream weights at (measured copy bandwidth)
    rate: float  # FLOP/s per kept pair's work (fitted; inf = no compute cost seen)
    source: str  # what it was fitted on: device, date, file, kernel
    points: int  # measured rows fitted
    max_abs_error: float  # largest |fitted / measured - 1| over those rows (in-sample)

    def routed_ms(self, distinct, pairs, expert_bytes: float, pair_flops: float):
        """Calibrated ms of one layer's routed experts; arrays broadcast."""
        distinct, pairs = np.asarray(distinct, float), np.asarray(pairs, float)
        per_expert = self.expert_ms + expert_bytes / self.bandwidth * 1e3
        return self.layer_ms + distinct * per_expert + pairs * pair_flops / self.rate * 1e3


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min ||x c - y|| subject to c >= 0, by trying every support (3 columns: 8 subsets)."""
    best, best_err = np.zeros(x.shape[1]), float(np.sum(y**2))
    for support in itertools.product((False, True), repeat=x.shape[1]):
        cols = np.flatnonzero(support)
        if not len(cols):
            continue
        sol, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        if (sol < 0).any():
            continue
        c = np.zeros(x.shape[1])
        c[cols] = sol
        err = float(np.sum((x @ c - y) ** 2))
        if err < best_err - 1e-15:
            best, best_err = c, err
    return best


def fit_cost_model(bench: pd.DataFrame, ms_column: str, expert_bytes: float, pair_flops: float,
                   bandwidth: float, source: str) -> CostModel:  # fmt: skip
    """Fit layer_ms, expert_ms, rate to measured rows (BENCH_COLUMNS + ms_column) of one
    layer whose experts weigh `expert_bytes` and cost `pair_flops` per kept pair."""
    missing = [c for c in (*BENCH_COLUMNS, ms_column) if c not in bench]
    if missing:
        raise ValueError(f"calibration table lacks columns {missing} ({source})")
    b = bench.dropna(subset=[ms_column])
    if len(b) < 3:
        raise ValueError(f"calibration needs >= 3 measured rows, got {len(b)} ({source})")
    distinct, pairs = b["distinct_experts"].to_numpy(float), b["slots"].to_numpy(float)  # R, R
    ms = b[ms_column].to_numpy(float)  # R
    floor = distinct * expert_bytes / bandwidth * 1e3  # R
    # unknowns: layer_ms, expert_ms, ms per 1e12 pair FLOPs (scaled for conditioning)
    x = np.stack([np.ones_like(ms), distinct, pairs * pair_flops / 1e12], axis=1)  # R, 3
    layer_ms, expert_ms, ms_per_tflop = _nnls(x, ms - floor)
    rate = 1e12 * 1e3 / ms_per_tflop if ms_per_tflop > 0 else float("inf")
    model = CostModel(float(layer_ms), float(expert_ms), float(bandwidth), float(rate), source, len(b), 0.0)
    err = float(np.max(np.abs(model.routed_ms(distinct, pairs, expert_bytes, pair_flops) / ms - 1)))
    # the fit's own error travels with its source: every label naming the calibration shows it
    source = f"{source}; fit within {100 * err:.0f}% on {len(b)} rows"
    model = CostModel(model.layer_ms, model.expert_ms, model.bandwidth, model.rate, source, len(b), err)
    log.info("cost model (%s): %.4f ms/layer + %.5f ms/expert + bytes at %.3g B/s + pairs at %.3g FLOP/s; "
             "in-sample error <= %.0f%%", source, layer_ms, expert_ms, bandwidth, rate, 100 * err)  # fmt: skip
    return model


def read_bench(path: str | Path) -> pd.DataFrame:
    """A calibration table: csv (lines starting with # are comments) or parquet."""
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, comment="#")
    from skipbench.io import read_table

    return read_table(path).to_pandas()


def load_calibration(block: dict, base_dir: str | Path, where: str = "") -> CostModel:
    """CostModel from a profile's `calibration:` block (data file relative to base_dir).

    Required keys: data, ms_column, expert_bytes, pair_flops, bandwidth, device, date, source.
    """
    need = ("data", "ms_column", "expert_bytes", "pair_flops", "bandwidth", "device", "date", "source")
    if not isinstance(block, dict) or any(k not in block for k in need):
        raise ValueError(f"{where}: `calibration` needs {list(need)}")
    try:
        bench = read_bench(Path(base_dir) / str(block["data"]))
        return fit_cost_model(bench, str(block["ms_column"]), float(block["expert_bytes"]), float(block["pair_flops"]),
                              float(block["bandwidth"]),
                              f"{block['device']}, {block['date']}, {block['data']} ({block['ms_column']})")  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as e:
        raise ValueError(f"{where}: calibration {block.get('data')!r} unusable: {e}") from e
