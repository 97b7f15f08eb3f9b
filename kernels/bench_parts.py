"""The skip kernel launch by launch, and vLLM's own fused MoE beside it (parts of bench.py).

Per (batch, rule) in shape["part_batches"] x PART_RULES, each timed alone over the buffers of one
real step: `layout` (the layout alone, one CTA), `prepare` (layout + x quantised +
zeroing: launch 1), `gate_up` (launch 2), `down` (launch 3), `layer` (all three, as
moe_triton runs them). `vllm_fused_moe` is vLLM's Triton fused MoE (fused_experts_op,
block FP8 w8a8) on the same weights: dense on every slot, and for a rule that keeps the
same number of slots per token, on the kept slots as its routing (vLLM cannot skip
otherwise); it is checked against the float64 reference first. Without vLLM the row
says why. Rows go to the RowLog as soon as each is measured.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch

PART_RULES = ("dense", "top2")


class RowLog:
    """Appends each row to a CSV the moment it is measured, so a killed run keeps them."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: list[str] | None = None

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def vllm_fused(layer: dict):
    """(fn(x, ids, w) -> out, None) running vLLM's fused MoE on the FP8 layer, or (None, why not)."""
    if layer["w13"].device.type != "cuda":
        return None, "vLLM's fused MoE runs on a GPU only (a CPU rehearsal)"
    try:
        from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts_op
    except Exception as exc:  # not installed, or a build for another device
        return None, f"vLLM not importable here: {type(exc).__name__}: {exc}"[:200]
    s = layer["scales"]

    def run(x, ids, w):
        return fused_experts_op(x, layer["w13"], layer["w2"], w.float(), ids.to(torch.int32), use_fp8_w8a8=True,
                                w1_scale=s["w13_scale"], w2_scale=s["w2_scale"], block_shape=[128, 128])  # fmt: skip

    return run, None


def time_parts(layer: dict, shape: dict, rules: dict, route, config_for, timer, log: RowLog, deadline: float,
               tolerance: float) -> list[dict]:
    """Rows {part, batch, rule, slots, ms, status, note} for the kernel's launches and vLLM's fused MoE."""
    from skipbench_kernels.moe_triton import moe_launches, moe_triton
    from skipbench_kernels.prepare import layout_on_device
    from skipbench_kernels.reference import moe_reference

    fused, why_not = vllm_fused(layer)
    rows = []
    for batch in shape["part_batches"]:
        x, ids, w = route(layer, shape, batch)
        for rule in PART_RULES:
            keep = rules[rule](ids, w)
            cfg = config_for(batch)
            launches, _ = moe_launches(x, layer["w13"], layer["w2"], ids, w, keep, **layer["scales"], config=cfg)
            parts = {"layout": lambda: layout_on_device(ids, keep, shape["experts"], cfg.block_m), **launches,
                     "layer": lambda: moe_triton(x, layer["w13"], layer["w2"], ids, w, keep, **layer["scales"],
                                                 config=cfg)}  # fmt: skip
            fused_case = _fused_case(fused, why_not, ids, w, keep, rule)
            if fused_case[0] is not None:
                f_ids, f_w = fused_case[0]
                ref = moe_reference(x, layer["w13"], layer["w2"], f_ids, f_w, None, **layer["scales"],
                                    quantize_activations=True, compute_dtype=torch.float64)  # fmt: skip
                try:
                    err = float((fused(x, f_ids, f_w).double() - ref).abs().max() / ref.abs().max())
                except Exception as exc:  # another vLLM version's signature, an unsupported shape: say so
                    err, fused_case = math.nan, (fused_case[0], f"error: {type(exc).__name__}: {exc}"[:200])
                ok = err < tolerance
                parts["vllm_fused_moe"] = (lambda f_ids=f_ids, f_w=f_w: fused(x, f_ids, f_w)) if ok else None
                if not math.isnan(err):
                    fused_case = (fused_case[0], f"rel err {err:.1e} vs float64" + ("" if ok else " (FAILED: not timed)"))
            else:
                parts["vllm_fused_moe"] = None
            for part, fn in parts.items():
                row = dict(part=part, batch=batch, rule=rule, slots=int(keep.sum()), ms=math.nan, status="ok",
                           note=fused_case[1] if part == "vllm_fused_moe" else "")  # fmt: skip
                if fn is None:
                    row["status"] = "not run"
                elif time.monotonic() > deadline:
                    row["status"] = "not run: time budget"
                else:
                    try:
                        row["ms"] = timer(fn)
                    except Exception as exc:
                        row["status"] = f"error: {type(exc).__name__}: {exc}"[:300]
                log.write(row)
                rows.append(row)
    return rows


def _fused_case(fused, why_not, ids, w, keep, rule):
    """((ids, w) routing for vLLM, note) or (None, why vLLM is not run here)."""
    if fused is None:
        return None, why_not
    if rule == "dense":
        return (ids, w), "every routed slot (vLLM skips nothing)"
    per_token = keep.sum(1)
    if not bool((per_token == per_token[0]).all()) or int(per_token[0]) == 0:
        return None, "kept slots differ per token: no fixed-K routing to give vLLM"
    k = int(per_token[0])
    return (ids[keep].view(-1, k), w[keep].view(-1, k)), f"the kept slots as a top-{k} routing"
