"""Stage 3: choose, build and self-test the MoE expert kernels for the device at hand.

Without a GPU the only backend is the pure-PyTorch reference (kernels/reference.py); the
manifest says so. Each self-test compares the backend, at the model's hidden and expert
sizes, against a float64 evaluation of the same routed computation with a skip mask.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from skipbench.io import write_table
from skipbench_kernels.reference import moe_reference

log = logging.getLogger(__name__)

KERNEL_MANIFEST_SCHEMA = pa.schema(
    [
        ("device", pa.string()),  # "cpu" or "cuda"
        ("device_name", pa.string()),  # CPU model or GPU name
        ("backend", pa.string()),  # kernel implementation selected for inference
        ("reason", pa.string()),  # why this backend was selected
        ("torch_version", pa.string()),
        ("cuda_version", pa.string()),  # null without CUDA
        ("triton_version", pa.string()),  # null when Triton is not installed
        ("test", pa.string()),  # self-test name: weight dtype and skip setting
        ("shape", pa.string()),  # JSON {tokens, hidden, intermediate, experts, slots}
        ("max_rel_err", pa.float64()),  # max |out - ref| / max |ref| against float64
        ("tolerance", pa.float64()),
        ("passed", pa.bool_()),
        ("seconds", pa.float64()),
    ]
)

# Relative error bounds against float64 (issue 7): FP8 weights and activations, BF16.
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2, "fp8": 2e-2}
SELF_TEST_TOKENS = 16
SELF_TEST_MAX_EXPERTS = 8  # real models have 256: test a slice, the kernel is per expert


@dataclass(frozen=True)
class MoeShape:
    hidden: int
    intermediate: int
    experts: int
    slots: int

    @classmethod
    def from_model_config(cls, cfg: dict) -> "MoeShape":
        experts = min(cfg["n_routed_experts"], SELF_TEST_MAX_EXPERTS)
        return cls(cfg["hidden_size"], cfg["moe_intermediate_size"], experts, min(cfg["num_experts_per_tok"], experts))


def _versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch_version": torch.__version__, "cuda_version": torch.version.cuda, "triton_version": triton_version}


def select_backend(requested: str, device: str) -> tuple[str, str]:
    if requested == "triton" and device != "cuda":
        raise RuntimeError("kernels.backend is 'triton' but no CUDA GPU is present")
    if requested in ("auto", "triton") and device == "cuda":
        return "reference", "no Triton MoE kernel is built yet: PyTorch reference on GPU"
    if requested == "reference":
        return "reference", "requested in config"
    return "reference", "no CUDA GPU: PyTorch reference on CPU (engines skip by weight 0)"


def _random_case(shape: MoeShape, weight_kind: str, device: str, gen: torch.Generator):
    from skipbench.fp8 import quantize_fp8_blocks

    e, h, i, k, t = shape.experts, shape.hidden, shape.intermediate, shape.slots, SELF_TEST_TOKENS
    x = torch.randn(t, h, generator=gen)
    w13 = torch.randn(e, 2 * i, h, generator=gen) / h**0.5
    w2 = torch.randn(e, h, i, generator=gen) / i**0.5
    ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)])  # T, K distinct
    weights = torch.rand(t, k, generator=gen)
    keep = torch.rand(t, k, generator=gen) > 0.3
    keep[:, 0] = True  # every token keeps its top slot, as every strategy does
    scales = {}
    if weight_kind == "fp8":
        q13, s13 = zip(*(quantize_fp8_blocks(w) for w in w13))
        q2, s2 = zip(*(quantize_fp8_blocks(w) for w in w2))
        w13, w2 = torch.stack(q13), torch.stack(q2)
        scales = {"w13_scale": torch.stack(s13), "w2_scale": torch.stack(s2)}
    elif weight_kind == "bf16":
        w13, w2 = w13.bfloat16(), w2.bfloat16()
    args = (x, w13, w2, ids, weights, keep)
    return [a.to(device) for a in args], {n: s.to(device) for n, s in scales.items()}


def self_test(backend: str, shape: MoeShape, weight_kind: str, device: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    args, scales = _random_case(shape, weight_kind, device, gen)
    quant_act = weight_kind == "fp8"
    start = time.perf_counter()
    out = moe_reference(*args, **scales, quantize_activations=quant_act, compute_dtype=torch.float32)
    seconds = time.perf_counter() - start
    # float64 oracle: the same quantised operands, accumulated exactly.
    ref = moe_reference(*args, **scales, quantize_activations=quant_act, compute_dtype=torch.float64)
    err = float((out.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
    tol = TOLERANCE[weight_kind]
    return {
        "test": f"{weight_kind} weights, random keep mask",
        "shape": json.dumps({"tokens": SELF_TEST_TOKENS, **shape.__dict__}),
        "max_rel_err": err,
        "tolerance": tol,
        "passed": err <= tol,
        "seconds": seconds,
    }


def build_kernels(kernels_cfg: dict, model_dir: Path, manifest_path: Path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    backend, reason = select_backend(kernels_cfg.get("backend", "auto"), device)
    log.info("kernel backend %s on %s (%s)", backend, device_name, reason)
    shape = MoeShape.from_model_config(json.loads((Path(model_dir) / "config.json").read_text()))
    common = {"device": device, "device_name": device_name, "backend": backend, "reason": reason, **_versions()}
    rows = []
    for kind in ("fp32", "bf16", "fp8"):
        row = {**common, **self_test(backend, shape, kind, device)}
        log.info("self-test %s: max rel err %.2e (tol %.0e) %s", kind, row["max_rel_err"], row["tolerance"],
                 "ok" if row["passed"] else "FAILED")
        rows.append(row)
    write_table(manifest_path, rows, KERNEL_MANIFEST_SCHEMA)
    failed = [r["test"] for r in rows if not r["passed"]]
    if failed:
        raise RuntimeError(f"kernel self-tests failed: {failed} (see {manifest_path})")
