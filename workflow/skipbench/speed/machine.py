"""The `this-machine` measurements, taken once per machine and kept: copy bandwidth and BF16
matmul rate (specs.measure_profile) and, for a profile with a `calibrate:` block, the served
model's MoE layer timed on the eager skip path (cpu_moe.time_layer_here).

The roofline rule reads them back instead of timing again (rules/roofline.smk: one file per
machine key, not per variant list), so adding a variant moves no other variant's prediction,
and a rerun on the same machine predicts the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd
import yaml

from skipbench.speed.costmodel import CostModel
from skipbench.speed.cpu_moe import CPU_MOE_SCHEMA, fit_layer, time_layer_here
from skipbench.speed.specs import HARDWARE_DIR, HardwareProfile, ModelShape, measure_profile, profile_path

log = logging.getLogger(__name__)


def measure_machine(name: str, model_dir: Path, hardware_dir: str | Path = HARDWARE_DIR) -> dict:
    """Measure profile `name` on this machine: its numbers, and the layer timings its
    `calibrate:` block asks for (None off CPU: a GPU has kernels/bench.py for that)."""
    path = profile_path(name, hardware_dir)
    cfg = yaml.safe_load(path.read_text())
    profile = measure_profile(cfg.get("name", path.stem), **cfg["measure"])
    bench = None
    if cfg.get("calibrate") is not None:
        if profile.device.startswith("cpu"):
            bench = time_layer_here(ModelShape.from_config(model_dir), **cfg["calibrate"])
        else:
            log.warning("%s: `calibrate` times the CPU eager layer; device is %s: left uncalibrated", name,
                        profile.device)  # fmt: skip
    keep = ("name", "device", "bandwidth", "bf16_flops", "fp8_flops", "sources")
    return {"profile": {k: v for k, v in dataclasses.asdict(profile).items() if k in keep},
            "layer": None if bench is None else bench.to_dict(orient="records")}


def read_machine(path: str | Path, shape: ModelShape) -> tuple[HardwareProfile, CostModel | None]:
    """The profile and its layer fit from a measure_machine record."""
    record = json.loads(Path(path).read_text())
    profile = HardwareProfile(**record["profile"])
    if not record["layer"]:
        return profile, None
    bench = pd.DataFrame(record["layer"])[CPU_MOE_SCHEMA.names]
    return profile, fit_layer(bench, profile, shape, profile.device)
