"""Stage 3: choose, build, tune and self-test the MoE expert kernels for the device at hand.

On a CUDA GPU with Triton the backend is the skip-aware Triton kernel (kernels/moe_triton.py):
it is compiled and tuned per decode batch at the model's real expert shapes (all its
experts, as memory allows), and the chosen tile configs go into the manifest, where
inference loads them (skipbench_kernels.integration.load_kernel_choice). Without a GPU
the only backend is the pure-PyTorch reference (kernels/reference.py); the manifest says
so. Each self-test runs the selected backend, at the model's hidden and expert sizes on
fresh random inputs with a skip mask, against a float64 evaluation of the same routed
computation (same quantised operands), within TOLERANCE per weight dtype.
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
from skipbench_kernels.reference import BLOCK, deepseek_route, moe_reference

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
        ("seconds", pa.float64()),  # wall time of the backend's call in the self-test
        ("tuned_dtype", pa.string()),  # weight dtype the configs were tuned for (fp8, bf16); null: not tuned
        # JSON [{tokens, ms, config: {block_m, gate_up: {block_n, block_k, num_warps, num_stages}, down}}]:
        # the tile config chosen per decode batch, and its measured layer time; null for the reference
        ("configs", pa.string()),
    ]
)

# Relative error bounds against float64 (issue 7): FP8 weights and activations, BF16.
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2, "fp8": 2e-2}
SELF_TEST_TOKENS = 16
SELF_TEST_MAX_EXPERTS = 8  # real models have 256: test a slice, the kernel is per expert
TUNE_BATCHES = (1, 16, 64, 128, 512)  # decode batch sizes a config is chosen for
TUNE_BUDGET_S = 240.0  # whole search; a DeepSeek-V3 layer takes about this on one GPU


@dataclass(frozen=True)
class MoeShape:
    """The expert GEMMs one engine rank runs: a tensor-parallel rank holds I / tp of each expert."""

    hidden: int
    intermediate: int  # per rank
    experts: int  # capped at SELF_TEST_MAX_EXPERTS for the self-test
    slots: int

    @classmethod
    def from_model_config(cls, cfg: dict, tensor_parallel_size: int = 1) -> "MoeShape":
        """Any family adapters.py knows (DeepSeek, Qwen MoE, Mixtral, OLMoE)."""
        from skipbench.model.adapters import routing_of
        from skipbench.model.adapters import expert_intermediate

        routing = routing_of(cfg)
        inter, _ = expert_intermediate(cfg, routing)
        if inter % tensor_parallel_size:
            raise ValueError(f"expert intermediate {inter} does not split over {tensor_parallel_size} ranks")
        experts = min(routing.experts, SELF_TEST_MAX_EXPERTS)
        return cls(cfg["hidden_size"], inter // tensor_parallel_size, experts, min(routing.top_k, experts))


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _versions() -> dict:
    return {"torch_version": torch.__version__, "cuda_version": torch.version.cuda, "triton_version": _triton_version()}


def select_backend(requested: str, device: str, triton_version: str | None = None) -> tuple[str, str]:
    """(backend, why) for config `kernels.backend` (auto | triton | reference) on this device."""
    if requested == "reference":
        return "reference", "requested in config"
    if device != "cuda":
        if requested == "triton":
            raise RuntimeError("kernels.backend is 'triton' but no CUDA GPU is present")
        return "reference", "no CUDA GPU: PyTorch reference on CPU (engines skip by weight 0)"
    if triton_version is None:
        if requested == "triton":
            raise RuntimeError("kernels.backend is 'triton' but Triton is not installed")
        return "reference", "Triton is not installed: PyTorch reference on GPU"
    return "triton", f"skip-aware Triton kernel (Triton {triton_version}) on the GPU"


def _random_case(shape: MoeShape, weight_kind: str, device: str, gen: torch.Generator):
    from skipbench.model.fp8 import quantize_fp8_blocks

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


def _run_backend(backend: str, args, scales: dict, quant_act: bool, tuned) -> torch.Tensor:
    if backend == "triton":
        from skipbench_kernels.moe_triton import moe_triton
        from skipbench_kernels.tune import config_for

        return moe_triton(*args, **scales, config=config_for(tuned, args[0].shape[0]))
    return moe_reference(*args, **scales, quantize_activations=quant_act, compute_dtype=torch.float32)


def self_test(backend: str, shape: MoeShape, weight_kind: str, device: str, seed: int = 0, tuned=()) -> dict:
    gen = torch.Generator().manual_seed(seed)
    args, scales = _random_case(shape, weight_kind, device, gen)
    quant_act = weight_kind == "fp8"
    _run_backend(backend, args, scales, quant_act, tuned)  # first call compiles: not timed
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = _run_backend(backend, args, scales, quant_act, tuned)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # float64 oracle: the same quantised operands, accumulated exactly.
    ref = moe_reference(*args, **scales, quantize_activations=quant_act, compute_dtype=torch.float64)
    err = float((out.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
    tol = TOLERANCE[weight_kind]
    return {
        "test": f"{weight_kind} weights, random keep mask, {backend}",
        "shape": json.dumps({"tokens": SELF_TEST_TOKENS, **shape.__dict__}),
        "max_rel_err": err,
        "tolerance": tol,
        "passed": err <= tol,
        "seconds": seconds,
    }


def model_weight_dtype(cfg: dict) -> str:
    """fp8 when the checkpoint ships DeepSeek's block-scaled e4m3 weights, else bf16."""
    return "fp8" if cfg.get("quantization_config", {}).get("fmt") == "e4m3" else "bf16"


def tune_for_model(cfg: dict, kind: str, batches=TUNE_BATCHES, budget_s: float = TUNE_BUDGET_S, seed: int = 0,
                   tensor_parallel_size: int = 1):
    """Tuned configs ([skipbench_kernels.tune.Tuned]) at the model's real expert shapes on
    this GPU, as one tensor-parallel rank holds them; routed like the model (its expert
    groups when all experts fit, plain top-k otherwise)."""
    from skipbench.model.adapters import routing_of
    from skipbench_kernels.moe_triton import moe_triton
    from skipbench_kernels.tune import random_layer, reference_checker, tune

    routing = routing_of(cfg)
    rank = MoeShape.from_model_config(cfg, tensor_parallel_size)
    h, i, k, n_experts = rank.hidden, rank.intermediate, routing.top_k, routing.experts
    per_expert = 3 * h * i * (1 if kind == "fp8" else 2)
    free, _ = torch.cuda.mem_get_info()
    experts = max(k, min(n_experts, int(free * 0.5 // per_expert)))  # leave room for the rest
    if experts < n_experts:
        log.warning("tuning on %d of %d experts: GPU memory", experts, n_experts)
    w13, w2, scales = random_layer(experts, h, i, kind, "cuda", seed)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    router, bias = torch.randn(experts, h, generator=gen, device="cuda"), torch.zeros(experts, device="cuda")
    groups = routing.n_group if experts == n_experts else 1
    check = reference_checker(w13, w2, scales, seed=seed)  # a config is timed only once it computes right
    tuned = []
    for b in batches:
        x = torch.randn(b, h, generator=gen, device="cuda", dtype=torch.bfloat16)
        ids, w = deepseek_route(x, router, bias, k, groups, min(routing.topk_group, groups),
                                routing.routed_scaling_factor)  # fmt: skip

        def step(config, x=x, ids=ids, w=w):
            return lambda: moe_triton(x, w13, w2, ids, w, None, **scales, config=config)

        tuned.append(tune(step, kind == "fp8", h, i, b, k, experts, check, TOLERANCE[kind],
                          budget_s=budget_s / len(batches)))  # fmt: skip
    del w13, w2, scales
    torch.cuda.empty_cache()
    return tuned


def build_kernels(kernels_cfg: dict, model_dir: Path, manifest_path: Path, tensor_parallel_size: int = 1) -> None:
    """Select, tune and self-test the backend at the expert shapes one engine rank runs."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    backend, reason = select_backend(kernels_cfg.get("backend", "auto"), device, _triton_version())
    log.info("kernel backend %s on %s (%s)", backend, device_name, reason)
    model_cfg = json.loads((Path(model_dir) / "config.json").read_text())
    shape = MoeShape.from_model_config(model_cfg, tensor_parallel_size)
    tuned, tuned_dtype, configs = [], None, None
    if backend == "triton":
        from skipbench_kernels.tune import configs_to_json

        tuned_dtype = model_weight_dtype(model_cfg)
        tuned = tune_for_model(model_cfg, tuned_dtype, budget_s=kernels_cfg.get("tune_budget_s", TUNE_BUDGET_S),
                               tensor_parallel_size=tensor_parallel_size)  # fmt: skip
        configs = configs_to_json(tuned)
    common = {"device": device, "device_name": device_name, "backend": backend, "reason": reason, **_versions(),
              "tuned_dtype": tuned_dtype, "configs": configs}  # fmt: skip
    rows = []
    kinds = ["fp32", "bf16", "fp8"]
    if shape.hidden % BLOCK or shape.intermediate % BLOCK:  # 128x128 weight / 1x128 activation blocks
        log.info("no fp8 self-test: hidden %d / rank intermediate %d are not multiples of %d", shape.hidden,
                 shape.intermediate, BLOCK)  # fmt: skip
        kinds.remove("fp8")
    for kind in kinds:
        # configs tuned for the model's weight dtype; other dtypes' self-tests use the kernel's default for theirs
        row = {**common, **self_test(backend, shape, kind, device, tuned=tuned if kind == tuned_dtype else ())}
        log.info("self-test %s: max rel err %.2e (tol %.0e) %s", kind, row["max_rel_err"], row["tolerance"],
                 "ok" if row["passed"] else "FAILED")
        rows.append(row)
    write_table(manifest_path, rows, KERNEL_MANIFEST_SCHEMA)
    failed = [r["test"] for r in rows if not r["passed"]]
    if failed:
        raise RuntimeError(f"kernel self-tests failed: {failed} (see {manifest_path})")
