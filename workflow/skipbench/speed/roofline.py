"""Roofline model of one decode step: predicted per-layer and whole-model time per variant and batch.

Each operation of a step costs max(bytes / bandwidth, flops / rate) on its own (kernels run
one after another), plus a fixed per-layer overhead (launches, routing, sync), all
per step of B tokens:

    routed experts  bytes = distinct experts * bytes per expert   (from the routing trace)
                    flops = kept (token, slot) pairs * 6 H I
    rest of a layer attention (MLA or GQA) + router + shared experts (MoE layers) or dense MLP,
                    weights read once per step, KV cache read per token of context
    whole model     sum over layers + lm_head; MoE layers take the traced mean, dense layers
                    (wherever they sit) their own cost

Shapes come from specs.ModelShape: any MoE family adapters.py reads (DeepSeek-V2/V3 with
MLA; Qwen2/3-MoE, Mixtral, OLMoE with grouped-query attention).

Skip paths: `skip_kernel` assumes a kernel where a skipped slot is never loaded nor
computed (the hypothetical this model is for); `weight0` is what the vLLM plugin does
(DESIGN.md section 3): every routed slot is still computed, so its traffic is the dense
model's and its predicted speedup is 1 by construction, never a saving.

Two predictions per profile, shown together as a band: `bytes_floor` (every term at the
profile's peak bandwidth and FLOP rate: a lower bound on the step's time, NOT a bound on
the speedup: a skip can save more than its bytes where the kernel is compute- or
launch-bound) and `calibrated` (the routed term from skipbench.speed.costmodel, fitted to
measured kernel times on that device: today's kernels, with their per-layer fixed cost).
A calibration is used only for the weight dtype and expert shape it timed (or their
tensor-parallel slices: bytes and FLOPs / n_devices, the per-layer launch cost kept); a
profile without one that covers the model gets the bytes floor alone, and its
`calibration_source` says why. kernels/bench.py output for a profile, when present,
replaces the profile's own calibration data (our kernel, not today's).
n_devices is tensor parallel: every expert split over the devices, communication not
modelled here (skipbench.speed.serving adds it; skipbench.speed.parallel does expert parallel).

Speedup = predicted tokens/s over dense's at the same batch; traffic replay holds every
step at exactly `batch` decode tokens (traffic.py, continuous batching), so this is a
tokens/s ratio at equal load. Shapes: H hidden, I expert intermediate, E experts,
K router slots, B tokens per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from skipbench.io import read_table, write_table
from skipbench.speed.costmodel import CostModel, fit_cost_model, pick_calibration
from skipbench.speed.cpu_moe import fit_layer, time_layer_here
from skipbench.speed.machine import read_machine
from skipbench.speed.specs import DEEPSEEK_V3_CONFIG, HARDWARE_DIR, HardwareProfile, ModelShape, load_profile
from skipbench.speed.traffic import ALL_LAYERS

log = logging.getLogger(__name__)

SKIP_PATHS = ("skip_kernel", "weight0")

# One row per (hardware, variant, batch, skip path, calibration, layer).
PREDICTION_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # always "predicted"
        ("model", pa.string()),  # model name (checkpoint directory or preset)
        ("hardware", pa.string()),  # hardware profile name (config/hardware/<name>.yaml)
        ("device", pa.string()),  # the device the profile describes
        ("n_devices", pa.int16()),  # tensor-parallel devices sharing the step (no communication term)
        ("weight_dtype", pa.string()),  # fp8 (128x128 block scales) or bf16 weights
        ("variant", pa.string()),  # skip variant
        ("skip_path", pa.string()),  # skip_kernel (skipped slot costs nothing) or weight0 (computed anyway)
        ("calibration", pa.string()),  # bytes_floor (peaks: a lower bound on time) or calibrated (costmodel fit)
        # calibrated: what the routed term was fitted on, with its errors; bytes_floor: "" where the
        # profile has a calibration for this model, else why it has none (dtype, expert shape)
        ("calibration_source", pa.string()),
        ("batch", pa.int32()),  # concurrency: sequences decoded together
        ("layer", pa.int16()),  # MoE layer index, or -1 = whole model (all layers + lm_head)
        ("tokens_per_step", pa.float64()),  # decode tokens in a step (refill replay: = batch)
        ("distinct_experts", pa.float64()),  # distinct experts loaded per step (whole model: mean per MoE layer)
        ("routed_bytes", pa.float64()),  # routed-expert weight bytes read per step
        ("routed_flops", pa.float64()),  # routed-expert FLOPs per step
        ("other_bytes", pa.float64()),  # attention/shared/dense/lm_head weights + KV cache bytes per step
        ("other_flops", pa.float64()),  # their FLOPs per step
        ("routed_ms", pa.float64()),  # routed-expert time per step
        ("other_ms", pa.float64()),  # time of everything else per step
        ("overhead_ms", pa.float64()),  # fixed per-layer overhead (summed over layers for -1)
        ("step_ms", pa.float64()),  # routed_ms + other_ms + overhead_ms
        ("routed_bound", pa.string()),  # memory or compute: which term sets routed_ms
        ("tokens_per_s", pa.float64()),  # decode tokens_per_step / step time (per layer: that layer alone)
        ("speedup", pa.float64()),  # tokens_per_s / dense's, same hardware, calibration, batch (weight0: 1)
    ]
)


def roofline_ms(nbytes, flops, bandwidth: float, rate: float):
    """(time ms, bound) of work that moves `nbytes` and does `flops`; arrays broadcast."""
    mem, comp = np.asarray(nbytes) / bandwidth * 1e3, np.asarray(flops) / rate * 1e3
    return np.maximum(mem, comp), np.where(comp > mem, "compute", "memory")


def bench_roofline_ms(bench: pd.DataFrame, profile: HardwareProfile, shape: ModelShape, dtype: str) -> np.ndarray:
    """Roofline ms of each kernel-bench row (one layer's routed experts). Without a `slots`
    column, batch x top_k slots are assumed: an upper bound on FLOPs, irrelevant while memory-bound."""
    slots = bench["slots"] if "slots" in bench else bench["batch"] * shape.top_k
    ms, _ = roofline_ms(bench["distinct_experts"] * shape.expert_bytes(dtype), slots * shape.expert_flops,
                        profile.bandwidth, profile.flops(dtype))  # fmt: skip
    return ms


def fit_kernel_calibration(bench: pd.DataFrame, profile: HardwareProfile, shape: ModelShape | None = None,
                           dtype: str = "fp8", source: str = "kernels/bench.py") -> CostModel:  # fmt: skip
    """CostModel from kernels/bench.py rows (batch, rule, distinct_experts, [slots], ms) at the
    bench's shape (DeepSeek-V3 FP8 by default), streaming at the profile's bandwidth."""
    shape = shape or ModelShape.from_config(DEEPSEEK_V3_CONFIG)
    bench = bench if "slots" in bench else bench.assign(slots=bench["batch"] * shape.top_k)  # upper bound
    return fit_cost_model(bench, "ms", shape.expert_bytes(dtype), shape.expert_flops, profile.bandwidth,
                          f"{profile.device}: {source} {dtype}", dtype=dtype,
                          expert_shape=(shape.hidden, shape.moe_inter))  # fmt: skip


def _routing_frames(traffic: pd.DataFrame, dense_variant: str) -> list[tuple[str, pd.DataFrame]]:
    """(skip path, per-layer traffic) pairs: weight0 replays the dense traffic under each variant's name.
    A batch the traces could not fill (c_effective < concurrency: fewer sequences than slots)
    is not predicted: its replay ran at a smaller batch."""
    short = traffic["c_effective"] < traffic["concurrency"]
    if short.any():
        log.warning("traces hold %d sequences: batches %s not predicted (draw more tasks or samples)",
                    traffic.loc[short, "distinct_sequences"].min(), sorted(set(traffic.loc[short, "concurrency"])))
    layers = traffic[(traffic["layer"] != ALL_LAYERS) & ~short]
    frames = [("skip_kernel", layers)]
    dense = layers[layers["variant"] == dense_variant]
    if dense.empty:
        log.warning("no %r variant in the traffic table: no weight0 rows, no speedups", dense_variant)
        return frames
    weight0 = [dense.assign(variant=v) for v in layers["variant"].unique()]
    return frames + [("weight0", pd.concat(weight0, ignore_index=True))]


def predict(
    traffic: pd.DataFrame,
    shape: ModelShape,
    profiles: list[HardwareProfile],
    context_len: int,
    model: str = "",
    weight_dtype: str | None = None,
    n_devices: int = 1,
    layer_overhead_ms: float = 0.0,
    calibrations: dict[str, CostModel] | None = None,
    dense_variant: str = "dense",
) -> pd.DataFrame:
    """PREDICTION_SCHEMA rows for every (profile, variant, batch, skip path, calibration, layer).

    traffic: TRAFFIC_SCHEMA rows (distinct experts and kept slots per step per layer);
    context_len: mean cached tokens per sequence during decode (prompt + half the output).
    """
    dtype = weight_dtype or shape.weight_dtype
    fixed_bytes, fixed_flops = shape.layer_fixed(moe=True, dtype=dtype)
    kv_bytes, kv_flops = shape.kv_per_token(context_len)
    frames = []
    for profile in profiles:
        bw, rate = profile.bandwidth * n_devices, profile.flops(dtype) * n_devices
        given = (calibrations or {}).get(profile.name)
        candidates = [given] if given else profile.costs
        cost, refused = pick_calibration(candidates, dtype, shape.hidden, shape.moe_inter)
        floor_note = f"bytes floor only: {refused}" if candidates and cost is None else ""
        if floor_note:
            log.warning("%s: %s", profile.name, floor_note)
        cal = {"bytes_floor": None} | ({"calibrated": cost} if cost else {})
        for skip_path, t in _routing_frames(traffic, dense_variant):
            for cal_name, calibration in cal.items():
                d = t[["variant", "concurrency", "layer", "tokens_per_step", "distinct_mean"]].rename(
                    columns={"concurrency": "batch", "distinct_mean": "distinct_experts"}
                )
                d["routed_bytes"] = t["distinct_mean"].to_numpy() * shape.expert_bytes(dtype)
                d["routed_flops"] = t["slots_per_step"].to_numpy() * shape.expert_flops
                routed, d["routed_bound"] = roofline_ms(d["routed_bytes"], d["routed_flops"], bw, rate)
                if calibration:  # each device holds 1/n of every expert: its slice's bytes and FLOPs
                    routed = calibration.routed_ms(d["distinct_experts"], t["slots_per_step"].to_numpy(),
                                                   shape.expert_bytes(dtype) / n_devices,
                                                   shape.expert_flops / n_devices)  # fmt: skip
                d["routed_ms"] = routed
                d["other_bytes"] = fixed_bytes + d["tokens_per_step"] * kv_bytes
                d["other_flops"] = d["tokens_per_step"] * (fixed_flops + kv_flops)
                d["other_ms"], _ = roofline_ms(d["other_bytes"], d["other_flops"], bw, rate)
                d["overhead_ms"] = layer_overhead_ms
                d["step_ms"] = d["routed_ms"] + d["other_ms"] + d["overhead_ms"]
                d["tokens_per_s"] = d["tokens_per_step"] / d["step_ms"] * 1e3
                whole = _whole_model(d, shape, dtype, context_len, bw, rate, layer_overhead_ms)
                out = pd.concat([whole, d], ignore_index=True)
                frames.append(out.assign(hardware=profile.name, device=profile.device, skip_path=skip_path,
                                         calibration=cal_name,
                                         calibration_source=calibration.source if calibration else floor_note))  # fmt: skip
    out = pd.concat(frames, ignore_index=True)
    out = out.assign(source="predicted", model=model, n_devices=n_devices, weight_dtype=dtype)
    # speedup: tokens/s over the dense variant's skip_kernel prediction, same hardware, calibration and
    # batch; every replayed step holds `batch` decode tokens, so the load is equal
    ref_keys = ["hardware", "calibration", "batch", "layer"]
    ref = out[(out["variant"] == dense_variant) & (out["skip_path"] == "skip_kernel")][ref_keys + ["tokens_per_s"]]
    out = out.merge(ref.rename(columns={"tokens_per_s": "dense_tok_s"}), on=ref_keys, how="left")
    out["speedup"] = out["tokens_per_s"] / out["dense_tok_s"]
    out.loc[out["skip_path"] == "weight0", "speedup"] = 1.0  # computed anyway: never a saving
    return out.sort_values(["hardware", "calibration", "skip_path", "variant", "batch", "layer"])[
        PREDICTION_SCHEMA.names
    ].reset_index(drop=True)


def _whole_model(layers: pd.DataFrame, shape: ModelShape, dtype: str, context_len: int, bw, rate, overhead_ms):
    """Whole-model step: MoE layers at their traced mean (x n_moe_layers), the n_dense_layers
    dense-MLP layers (any positions) and lm_head (bf16, read once per step even when tied)."""
    g = layers.groupby(["variant", "batch"], sort=False)
    w = g[["tokens_per_step", "distinct_experts", "routed_bytes", "routed_flops", "routed_ms",
           "other_bytes", "other_flops", "other_ms"]].mean().reset_index()  # fmt: skip
    n_moe = shape.n_moe_layers
    for col in ("routed_bytes", "routed_flops", "routed_ms", "other_bytes", "other_flops", "other_ms"):
        w[col] *= n_moe
    w["routed_bound"] = g["routed_bound"].agg(lambda s: s.mode().iloc[0]).to_numpy()
    dense_bytes, dense_flops = shape.layer_fixed(moe=False, dtype=dtype)
    kv_bytes, kv_flops = shape.kv_per_token(context_len)
    head_bytes, head_flops = shape.vocab * shape.hidden * 2, 2 * shape.vocab * shape.hidden  # bf16 lm_head
    tokens, n_dense = w["tokens_per_step"], shape.n_dense_layers
    extra_ms = (
        n_dense * roofline_ms(dense_bytes + tokens * kv_bytes, tokens * (dense_flops + kv_flops), bw, rate)[0]
        + roofline_ms(head_bytes, tokens * head_flops, bw, rate)[0]
    )
    w["other_bytes"] += n_dense * (dense_bytes + tokens * kv_bytes) + head_bytes
    w["other_flops"] += tokens * (n_dense * (dense_flops + kv_flops) + head_flops)
    w["other_ms"] += extra_ms
    w["overhead_ms"] = overhead_ms * shape.n_layers
    w["step_ms"] = w["routed_ms"] + w["other_ms"] + w["overhead_ms"]
    w["tokens_per_s"] = tokens / w["step_ms"] * 1e3
    w["layer"] = ALL_LAYERS
    return w


# Predicted next to measured, one row per (measurement, calibration) that a prediction covers.
VALIDATION_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # kernel (one layer's routed experts, kernels/bench.py) or engine (decode step)
        ("hardware", pa.string()),  # profile the prediction used
        ("calibration", pa.string()),  # bytes_floor or calibrated (PREDICTION_SCHEMA)
        ("device", pa.string()),  # device the measurement ran on
        ("variant", pa.string()),  # skip variant (engine) or bench rule (kernel)
        ("batch", pa.int32()),  # batch / concurrency
        ("distinct_experts", pa.float64()),  # per layer per step (engine: predicted from the trace)
        ("predicted_ms", pa.float64()),  # the prediction of that calibration
        ("measured_ms", pa.float64()),  # kernel ms, or the engine's median time per output token
        ("rel_error", pa.float64()),  # predicted / measured - 1
        ("measured_by", pa.string()),  # what produced the measurement
    ]
)


def validate(
    predictions: pd.DataFrame,
    kernel_bench: dict[str, pd.DataFrame] | None = None,
    profiles: dict[str, HardwareProfile] | None = None,
    throughput: pd.DataFrame | None = None,
    calibrations: dict[str, CostModel] | None = None,
) -> pd.DataFrame:
    """VALIDATION_SCHEMA rows: kernel bench tables ({profile name: table}, DeepSeek-V3 FP8 layer)
    against the bytes-floor roofline and the calibrated model fitted on them (in-sample), and engine
    runs (THROUGHPUT_SCHEMA) against whole-model step predictions of a profile describing the
    same device, under each calibration predicted."""
    rows = []
    dsv3 = ModelShape.from_config(DEEPSEEK_V3_CONFIG)
    for name, bench in (kernel_bench or {}).items():
        profile = profiles[name]
        preds = {"bytes_floor": bench_roofline_ms(bench, profile, dsv3, "fp8")}
        if name in (calibrations or {}):
            slots = bench["slots"] if "slots" in bench else bench["batch"] * dsv3.top_k
            preds["calibrated"] = calibrations[name].routed_ms(bench["distinct_experts"], slots,
                                                               dsv3.expert_bytes("fp8"), dsv3.expert_flops)  # fmt: skip
        for cal, pred in preds.items():
            rows.append(pd.DataFrame(dict(
                kind="kernel", hardware=name, calibration=cal, device=profile.device, variant=bench["rule"],
                batch=bench["batch"], distinct_experts=bench["distinct_experts"], predicted_ms=pred,
                measured_ms=bench["ms"], measured_by="kernels/bench.py",
            )))  # fmt: skip
    if throughput is not None and len(throughput):
        whole = predictions[predictions["layer"] == ALL_LAYERS]
        meas = throughput.assign(
            batch=throughput["concurrency"],
            skip_path=throughput["skip_path"].replace({"none": "skip_kernel"}),  # unpatched dense == dense
            measured_ms=throughput["tpot_median_ms"],
            measured_by=throughput["engine"] + " " + throughput["engine_version"],
        )
        both = meas.merge(whole, on=["variant", "batch", "device", "skip_path"], how="inner")
        rows.append(pd.DataFrame(dict(kind="engine", hardware=both["hardware"], calibration=both["calibration"],
                                      device=both["device"], variant=both["variant"], batch=both["batch"],
                                      distinct_experts=both["distinct_experts"], predicted_ms=both["step_ms"],
                                      measured_ms=both["measured_ms"], measured_by=both["measured_by"])))  # fmt: skip
    if not rows:
        return VALIDATION_SCHEMA.empty_table().to_pandas()
    out = pd.concat(rows, ignore_index=True)
    out["rel_error"] = out["predicted_ms"] / out["measured_ms"] - 1.0
    return out[VALIDATION_SCHEMA.names]


def _read_any(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    return pd.read_csv(path) if path.suffix == ".csv" else read_table(path).to_pandas()


def run_roofline(
    model_dir: str | os.PathLike,
    traffic_path: str | os.PathLike,
    hardware: list[str],
    context_len: int,
    out_path: str | os.PathLike,
    validation_path: str | os.PathLike,
    n_devices: int = 1,
    layer_overhead_ms: float = 0.0,
    weight_dtype: str | None = None,
    kernel_bench: dict[str, str] | None = None,
    throughput_paths: list[str] = (),
    hardware_dir: str | os.PathLike = HARDWARE_DIR,
    machine: dict[str, str] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The roofline stage: predictions for every profile in `hardware`, then validation.

    kernel_bench: {profile name: kernels/bench.py table (csv or parquet)} measured on that
    device; absent files are skipped (no GPU run yet). throughput_paths: THROUGHPUT_SCHEMA
    tables; they validate profiles whose device is the one they ran on (e.g. `this-machine`).
    machine: {profile name: speed/machine.py record} of the profiles measured on this machine
    (kept per machine by their own job); a profile with a `calibrate:` block and no record is
    calibrated here, by timing the served model's own MoE layer shape (cpu_moe.time_layer_here).
    """
    from skipbench.speed.traffic import TRAFFIC_SCHEMA

    shape = ModelShape.from_config(model_dir)
    profiles, timed_here = {}, {}
    for name in hardware:  # a profile measured on this machine: read back what its own job kept
        if name in (machine or {}):
            profiles[name], timed_here[name] = read_machine(machine[name], shape)
        else:
            profiles[name] = load_profile(name, hardware_dir)
    benches = {n: _read_any(p) for n, p in (kernel_bench or {}).items() if Path(p).exists()}
    for name, path in (kernel_bench or {}).items():
        if name not in benches:
            log.warning("kernel bench %s for %s not found: %s predictions stay uncalibrated", path, name, name)
    calibrations = {n: fit_kernel_calibration(b, profiles[n]) for n, b in benches.items()}
    calibrations |= {n: c for n, c in timed_here.items() if c is not None and n not in calibrations}
    for name, profile in profiles.items():
        if profile.calibrate is not None and name not in calibrations and profile.device.startswith("cpu"):
            # no kept measurement (a direct call): time the layer now
            calibrations[name] = fit_layer(time_layer_here(shape, **profile.calibrate), profile, shape, profile.device)
    traffic = read_table(traffic_path, TRAFFIC_SCHEMA).to_pandas()
    predictions = predict(traffic, shape, list(profiles.values()), context_len, model=Path(model_dir).name,
                          weight_dtype=weight_dtype, n_devices=n_devices, layer_overhead_ms=layer_overhead_ms,
                          calibrations=calibrations)  # fmt: skip
    throughput = pd.concat([read_table(p).to_pandas() for p in throughput_paths]) if throughput_paths else None
    validation = validate(predictions, benches, profiles, throughput, calibrations)
    for row in validation.itertuples():
        log.info("validation %s %s %s b=%d: predicted %.3f ms, measured %.3f ms (%+.0f%%)", row.kind, row.hardware,
                 row.variant, row.batch, row.predicted_ms, row.measured_ms, 100 * row.rel_error)  # fmt: skip
    return (
        write_table(out_path, pa.Table.from_pandas(predictions, preserve_index=False), PREDICTION_SCHEMA),
        write_table(validation_path, pa.Table.from_pandas(validation, preserve_index=False), VALIDATION_SCHEMA),
    )
