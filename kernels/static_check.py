"""Static evidence for the skip kernel without a GPU: its machine code for sm_90 and its launches.

    python kernels/static_check.py [--kernels DIR] [--out FILE.json]

Runs moe_triton at DeepSeek-V3's shapes (256 experts, hidden 7168, intermediate 2048,
FP8 128x128 or --weights bf16, top-8) on CPU tensors with every Triton launch intercepted: each launch is
compiled for an H100/H200 (GPUTarget cuda sm_90, warp 32) with the installed Triton and
its SASS read (cuobjdump from the Triton wheel), and nothing runs. Torch ops are counted
with a dispatch mode; views and allocations (no kernel) are left out.

Reported per GEMM kernel: the SASS instructions of one trip of its innermost loop that
holds an MMA (= one K step of one warp; a static count over the loop body, so branches
inside it count as if taken), the MMA instruction used, and the issue rate an SM needs to
stream its share of HBM at that rate: instructions x warps per CTA per K step divided by
the cycles the step's weight bytes take at BANDWIDTH / SMS per SM and CLOCK_HZ (4 is the
SM's peak: 4 schedulers). Per batch and skip setting: launches (Triton + torch) per MoE
layer. --kernels points at another copy of kernels/ (e.g. an older commit) to compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANDWIDTH = 4.24e12  # B/s, the H200 copy bandwidth the floor uses
SMS, CLOCK_HZ = 132, 1.98e9  # H200 SXM
SHAPE = dict(experts=256, hidden=7168, intermediate=2048, top_k=8)
CASES = ((1, "dense"), (1, "top2"), (16, "dense"), (16, "top2"))
MMA = re.compile(r"\b(HMMA|HGMMA|QGMMA|IMMA|WGMMA|UTCQMMA|UTCHMMA)\S*")
INSTR = re.compile(r"^[0-9a-fA-F-]{2}:[0-9a-fA-F-]:[0-9a-fA-F-]:[A-Za-z-]:[0-9a-fA-F]\t(.+?);?\s*$")
LABEL = re.compile(r"^(\.?L\w+):\s*$")
BRANCH = re.compile(r"\bBRA\s+(\.?L\w+)")
FREE_OPS = {"empty", "empty_strided", "empty_like", "lift_fresh", "detach", "alias"}


def _load_kernels(path: Path):
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: this compiles for sm_90, it does not interpret")
    spec = importlib.util.spec_from_file_location("skipbench_kernels", path / "__init__.py",
                                                  submodule_search_locations=[str(path)])  # fmt: skip
    sys.modules["skipbench_kernels"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return importlib.import_module("skipbench_kernels.moe_triton")


def sass_loops(sass: str) -> list[list[str]]:
    """Bodies (instruction texts) of the backward-branch loops of a SASS listing, innermost first."""
    items, labels = [], {}
    for line in sass.splitlines():
        if m := LABEL.match(line.strip()):
            labels[m.group(1)] = len(items)
        elif m := INSTR.match(line.strip()):
            items.append(m.group(1))
    loops = []
    for j, ins in enumerate(items):
        if (m := BRANCH.search(ins)) and labels.get(m.group(1), j + 1) <= j:
            loops.append(items[labels[m.group(1)] : j + 1])
    return sorted(loops, key=len)


def k_step_stats(sass: str) -> dict:
    """Instructions per trip of the innermost loop holding an MMA, and that MMA's opcode."""
    for body in sass_loops(sass):
        mmas = [m.group(0) for ins in body if (m := MMA.search(ins))]
        if mmas:
            return {"instructions": len(body), "mma": sorted(set(mmas)), "mma_count": len(mmas)}
    return {"instructions": None, "mma": [], "mma_count": 0}


class Capture:
    """Intercepts JITFunction.run: compiles each launch for sm_90 instead of running it."""

    def __init__(self):
        self.launches = []

    def __enter__(self):
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime import jit

        self.jit, self.saved = jit, jit.JITFunction.run
        target = GPUTarget("cuda", 90, 32)
        backend = make_backend(target)
        capture = self

        def run(fn, *args, grid, warmup, **kwargs):
            import triton

            kwargs.setdefault("debug", False)
            binder = jit.create_function_from_signature(fn.signature, fn.params, backend)
            bound, spec, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)  # fmt: skip
            capture.launches.append((fn.__name__, tuple(grid), kwargs, compiled))
            return None

        jit.JITFunction.run = run
        return self

    def __exit__(self, *exc):
        self.jit.JITFunction.run = self.saved


def torch_ops(fn) -> list[str]:
    """Names of the torch ops fn runs that launch a kernel on a GPU (views, allocations left out)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            schema = func._schema
            is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
            if not is_view and func._schema.name.split("::")[-1] not in FREE_OPS:
                ops.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return ops


def layer_case(mt, tokens: int, rule: str, config=None, weights: str = "fp8"):
    """One DeepSeek-V3 layer's call at this batch: FP8 weights left uninitialised (never
    touched, so the 11 GB are never paged in), DeepSeek-like routing."""
    import torch

    e, h, i, k = SHAPE["experts"], SHAPE["hidden"], SHAPE["intermediate"], SHAPE["top_k"]
    dtype = torch.float8_e4m3fn if weights == "fp8" else torch.bfloat16
    w13 = torch.empty(e, 2 * i, h, dtype=dtype)
    w2 = torch.empty(e, h, i, dtype=dtype)
    s13 = torch.ones(e, 2 * i // 128, h // 128) if weights == "fp8" else None
    s2 = torch.ones(e, h // 128, i // 128) if weights == "fp8" else None
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(tokens)])
    w = torch.rand(tokens, k, generator=g)
    keep = torch.zeros(tokens, k, dtype=torch.bool)
    keep[:, : (2 if rule == "top2" else k)] = True
    x = torch.randn(tokens, h).bfloat16()
    extra = {} if config is None else {"config": mt.MoeConfig.from_json(config)}
    return lambda: mt.moe_triton(x, w13, w2, ids, w, keep, w13_scale=s13, w2_scale=s2, **extra)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", type=Path, default=ROOT / "kernels", help="a copy of kernels/ to inspect")
    p.add_argument("--out", type=Path, help="also write the report as JSON")
    p.add_argument("--config", help="a MoeConfig as JSON (default: the kernel's default for the weights)")
    p.add_argument("--weights", choices=("fp8", "bf16"), default="fp8")
    args = p.parse_args(argv)
    mt = _load_kernels(args.kernels.resolve())
    bytes_per_cycle = BANDWIDTH / SMS / CLOCK_HZ
    report = {"gemms": {}, "launches": [], "target": "sm_90", "bandwidth": BANDWIDTH, "sms": SMS, "clock_hz": CLOCK_HZ}
    for tokens, rule in CASES:
        with Capture() as cap:
            ops = torch_ops(layer_case(mt, tokens, rule, args.config, args.weights))
        report["launches"].append({"batch": tokens, "rule": rule, "triton": [n for n, *_ in cap.launches],
                                   "torch_ops": ops, "total": len(cap.launches) + len(ops)})  # fmt: skip
        for name, grid, kw, compiled in cap.launches:
            if "BLOCK_K" not in kw or name in report["gemms"]:
                continue
            stats = k_step_stats(compiled.asm["sass"] if "sass" in compiled.asm else _sass(compiled))
            wide = 2 if name.startswith("_gate_up") else 1  # gate/up tiles hold gate and up rows
            step_bytes = wide * kw["BLOCK_N"] * kw["BLOCK_K"] * (1 if args.weights == "fp8" else 2)  # weight bytes per K step
            warps = compiled.metadata.num_warps
            need = (stats["instructions"] or 0) * warps / (step_bytes / bytes_per_cycle)
            report["gemms"][name] = {**stats, "grid": grid, "warps": warps, "stages": compiled.metadata.num_stages,
                                     "block_m": kw["BLOCK_M"], "block_n": kw["BLOCK_N"], "block_k": kw["BLOCK_K"],
                                     "weight_bytes_per_k_step": step_bytes, "issue_rate_needed": round(need, 2)}  # fmt: skip
    print(_markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


def _sass(compiled) -> str:
    from triton.tools.disasm import get_sass

    return get_sass(compiled.asm["cubin"])


def _markdown(report: dict) -> str:
    lines = ["| GEMM | tile (M x N x K) | warps/stages | MMA | SASS instr per K step per warp | issue rate needed (peak 4) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, g in report["gemms"].items():
        lines.append(f"| {name} | {g['block_m']} x {g['block_n']} x {g['block_k']} | {g['warps']}/{g['stages']} | "
                     f"{', '.join(g['mma'])} ({g['mma_count']}) | {g['instructions']} | {g['issue_rate_needed']} |")  # fmt: skip
    lines += ["", "| batch | rule | Triton launches | torch ops (kernels) | launches per layer |", "|---|---|---|---|---|"]
    for r in report["launches"]:
        lines.append(f"| {r['batch']} | {r['rule']} | {len(r['triton'])} | {len(r['torch_ops'])} | {r['total']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
