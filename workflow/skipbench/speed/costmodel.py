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

What transfers (ours, stated): a fit holds for the kernel, weight dtype and expert shape it
was timed at. `applies_to` refuses another dtype or hidden size, and another expert width
unless it is the measured expert split over n tensor-parallel devices (routed_ms is
then given the slice's bytes and FLOPs).
Under that split the terms that scale with the work scale: bytes / bandwidth and pairs x
FLOPs / rate by 1/n, and `expert_ms` with the expert's bytes (at one shape it is the gap
between the kernel's achieved and the copy bandwidth, not a launch: a grouped GEMM is one
launch per layer); `layer_ms`, the launch/routing cost of the layer, is kept as it is, never
multiplied by the expert size. Every fit reports its in-sample error and its
leave-one-batch-out error (refit without each batch, predict that batch's rows).
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
    held_out_error: float = float("nan")  # largest error of a batch's rows, fitted without that batch
    dtype: str = ""  # weight dtype timed (fp8, bf16); "" = not recorded (applies_to cannot check it)
    expert_shape: tuple[int, int] | None = None  # (hidden, intermediate) of the timed expert; None = not recorded
    measured_expert_bytes: float = float("nan")  # bytes of one timed expert: expert_ms scales with bytes from it

    def routed_ms(self, distinct, pairs, expert_bytes: float, pair_flops: float):
        """Calibrated ms of one layer's routed experts; arrays broadcast. expert_bytes below the
        measured expert's (a tensor-parallel slice) scale expert_ms with them; layer_ms stays."""
        distinct, pairs = np.asarray(distinct, float), np.asarray(pairs, float)
        scale = expert_bytes / self.measured_expert_bytes if self.measured_expert_bytes > 0 else 1.0
        per_expert = self.expert_ms * scale + expert_bytes / self.bandwidth * 1e3
        return self.layer_ms + distinct * per_expert + pairs * pair_flops / self.rate * 1e3

    def applies_to(self, dtype: str, hidden: int, intermediate: int) -> str:
        """"" when this fit covers whole experts of (hidden, intermediate) in `dtype` (and so
        their tensor-parallel slices, scaled in routed_ms); else why not, in words."""
        if self.dtype and dtype != self.dtype:
            return f"timed on {self.dtype} weights, not {dtype}"
        if self.expert_shape is None:
            return ""
        h, i = self.expert_shape
        if hidden != h or intermediate != i:
            return f"timed at expert {h}x{i}, not {hidden}x{intermediate}"
        return ""


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


def _fit_terms(b: pd.DataFrame, ms_column: str, expert_bytes: float, pair_flops: float, bandwidth: float):
    """(layer_ms, expert_ms, rate) fitted on rows b."""
    distinct, pairs = b["distinct_experts"].to_numpy(float), b["slots"].to_numpy(float)  # R, R
    ms = b[ms_column].to_numpy(float)  # R
    floor = distinct * expert_bytes / bandwidth * 1e3  # R
    # unknowns: layer_ms, expert_ms, ms per 1e12 pair FLOPs (scaled for conditioning)
    x = np.stack([np.ones_like(ms), distinct, pairs * pair_flops / 1e12], axis=1)  # R, 3
    layer_ms, expert_ms, ms_per_tflop = _nnls(x, ms - floor)
    return float(layer_ms), float(expert_ms), float(1e12 * 1e3 / ms_per_tflop) if ms_per_tflop > 0 else float("inf")


def _rel_error(model: CostModel, b: pd.DataFrame, ms_column: str, expert_bytes: float, pair_flops: float):
    """|predicted / measured - 1| per row of b."""
    pred = model.routed_ms(b["distinct_experts"], b["slots"], expert_bytes, pair_flops)
    return np.abs(pred / b[ms_column].to_numpy(float) - 1)


def leave_one_batch_out(bench: pd.DataFrame, ms_column: str, expert_bytes: float, pair_flops: float,
                        bandwidth: float) -> dict[int, float]:  # fmt: skip
    """{batch: largest error on that batch's rows of the fit to all other batches}; batches
    whose leaving-out leaves fewer than 3 rows are not scored."""
    b = bench.dropna(subset=[ms_column])
    out = {}
    for batch in sorted(b["batch"].unique()):
        train, test = b[b["batch"] != batch], b[b["batch"] == batch]
        if len(train) < 3:
            continue
        layer_ms, expert_ms, rate = _fit_terms(train, ms_column, expert_bytes, pair_flops, bandwidth)
        model = CostModel(layer_ms, expert_ms, bandwidth, rate, "", len(train), 0.0)
        out[int(batch)] = float(np.max(_rel_error(model, test, ms_column, expert_bytes, pair_flops)))
    return out


def fit_cost_model(bench: pd.DataFrame, ms_column: str, expert_bytes: float, pair_flops: float,
                   bandwidth: float, source: str, dtype: str = "",
                   expert_shape: tuple[int, int] | None = None) -> CostModel:  # fmt: skip
    """Fit layer_ms, expert_ms, rate to measured rows (BENCH_COLUMNS + ms_column) of one
    layer whose experts weigh `expert_bytes` and cost `pair_flops` per kept pair; dtype and
    expert_shape (hidden, intermediate) record what was timed, for CostModel.applies_to."""
    missing = [c for c in (*BENCH_COLUMNS, ms_column) if c not in bench]
    if missing:
        raise ValueError(f"calibration table lacks columns {missing} ({source})")
    b = bench.dropna(subset=[ms_column])
    if len(b) < 3:
        raise ValueError(f"calibration needs >= 3 measured rows, got {len(b)} ({source})")
    layer_ms, expert_ms, rate = _fit_terms(b, ms_column, expert_bytes, pair_flops, bandwidth)
    model = CostModel(layer_ms, expert_ms, float(bandwidth), rate, source, len(b), 0.0)
    err = float(np.max(_rel_error(model, b, ms_column, expert_bytes, pair_flops)))
    lobo = leave_one_batch_out(b, ms_column, expert_bytes, pair_flops, bandwidth)
    held = max(lobo.values()) if lobo else float("nan")
    # the fit's own errors travel with its source: every label naming the calibration shows them
    held_txt = f", leave-one-batch-out within {100 * held:.0f}%" if lobo else ", no batch to leave out"
    source = f"{source}; fit within {100 * err:.0f}% in-sample{held_txt} on {len(b)} rows"
    model = CostModel(layer_ms, expert_ms, float(bandwidth), rate, source, len(b), err, held, dtype,
                      tuple(expert_shape) if expert_shape else None, float(expert_bytes))  # fmt: skip
    log.info("cost model (%s): %.4f ms/layer + %.5f ms/expert + bytes at %.3g B/s + pairs at %.3g FLOP/s; "
             "in-sample error <= %.0f%%; leave-one-batch-out: %s", source, layer_ms, expert_ms, bandwidth, rate,
             100 * err, ", ".join(f"b={k} {100 * v:.0f}%" for k, v in lobo.items()) or "none")  # fmt: skip
    return model


def read_bench(path: str | Path) -> pd.DataFrame:
    """A calibration table: csv (lines starting with # are comments) or parquet."""
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, comment="#")
    from skipbench.io import read_table

    return read_table(path).to_pandas()


def load_calibration(block: dict, base_dir: str | Path, where: str = "") -> CostModel:
    """CostModel from one entry of a profile's `calibration:` (data file relative to base_dir).

    Required keys: data, ms_column, expert_bytes, pair_flops, bandwidth, device, date, source,
    and what was timed: dtype (fp8, bf16), hidden, intermediate (the expert's shape), kernel.
    """
    need = ("data", "ms_column", "expert_bytes", "pair_flops", "bandwidth", "device", "date", "source",
            "dtype", "hidden", "intermediate", "kernel")  # fmt: skip
    if not isinstance(block, dict) or any(k not in block for k in need):
        raise ValueError(f"{where}: each `calibration` entry needs {list(need)}")
    try:
        bench = read_bench(Path(base_dir) / str(block["data"]))
        return fit_cost_model(bench, str(block["ms_column"]), float(block["expert_bytes"]), float(block["pair_flops"]),
                              float(block["bandwidth"]),
                              f"{block['device']}, {block['date']}, {block['kernel']} {block['dtype']}, "
                              f"{block['data']} ({block['ms_column']})",
                              dtype=str(block["dtype"]),
                              expert_shape=(int(block["hidden"]), int(block["intermediate"])))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as e:
        raise ValueError(f"{where}: calibration {block.get('data')!r} unusable: {e}") from e


def pick_calibration(costs, dtype: str, hidden: int, intermediate: int) -> tuple[CostModel | None, str]:
    """(the first fit in `costs` that covers these experts, "") or (None, why none does)."""
    reasons = []
    for cost in costs:
        why = cost.applies_to(dtype, hidden, intermediate)
        if not why:
            return cost, ""
        reasons.append(why)
    if not reasons:
        return None, "no calibration"
    return None, f"no calibration for {dtype} experts {hidden}x{intermediate} (" + "; ".join(reasons) + ")"
