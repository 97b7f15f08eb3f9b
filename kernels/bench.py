"""One DeepSeek-V3 MoE layer's routed experts under skip settings: the skip-aware FP8
kernel against torch._grouped_mm (BF16), an eager per-expert loop (BF16) and the same
kernel fed zero weights instead of a keep mask (the control: it must save nothing).

    python kernels/bench.py --out DIR              # one GPU, under 8 minutes (--budget-s)
    python kernels/bench.py --out DIR --smoke      # CPU: tiny shapes, Triton interpreter (CI)

Order: build the layer on the device (256 experts, hidden 7168, intermediate 2048, FP8
128x128 block scales, plus its BF16 dequantisation for the baselines), check every
method against the float64 reference (abort if the kernel fails), measure copy
bandwidth, tune tile configs briefly, then time each (batch, rule, method). Graph-safe
methods replay from a CUDA graph with the L2 flushed (triton.testing.do_bench); the
eager loop syncs by design and is timed as called. Rows past the budget are listed as
not run, never estimated.

Per row: ms, distinct experts loaded, weight bytes read (distinct experts x bytes per
expert, scales included), floor_ms = bytes / copy bandwidth, bw_share = floor_ms / ms,
and saving_share = (dense ms - ms) / ((dense bytes - bytes) / bandwidth), the share of
the ideal skip saving realised. Files in DIR: bench_rows.csv/.parquet (all methods),
kernel_bench.csv (the kernel's rows: batch, rule, distinct_experts, slots, ms; what
skipbench.speed.roofline reads), bench.json (device, versions, bandwidth, checks, configs),
summary.md (the table for kernels/BENCHMARKS.md), parts.csv (each launch alone and vLLM's
fused MoE, bench_parts.py); rows_live.csv / parts_live.csv get each row as it is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")

FULL = dict(experts=256, hidden=7168, intermediate=2048, top_k=8, n_group=8, topk_group=4,
            batches=(1, 16, 128, 4, 64, 512, 2, 8, 32, 256), tune_batches=(1, 16, 128, 512), part_batches=(1, 16))  # fmt: skip
# Interpreted kernels cost seconds a call: few experts, few rows.
SMOKE = dict(experts=8, hidden=256, intermediate=128, top_k=4, n_group=2, topk_group=1,
             batches=(1, 4), tune_batches=(4,), tune_s_max=10.0, part_batches=(1, 4))  # fmt: skip
CHECK_BATCH = 4
TOLERANCE = {"fp8": 2e-2, "bf16": 1e-2, "baseline": 2e-2}  # vs float64; baselines round their output to bf16


def _import_kernels(use_interpreter: bool):
    """skipbench_kernels and skipbench.skip.strategies, installed or straight from this checkout."""
    if use_interpreter:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is jitted
    sys.path.insert(0, str(ROOT / "workflow"))
    try:
        import skipbench_kernels  # noqa: F401
    except ImportError:  # a bare checkout: map kernels/ to its package name
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "skipbench_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")])  # fmt: skip
        sys.modules["skipbench_kernels"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


def _wall_timer(fn, reps: int = 1) -> float:
    """Median wall ms after one warm call (CPU smoke runs: interpreted kernels, numbers
    only prove the plumbing)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _timers(cuda: bool):
    """(graph-safe timer, plain timer): both take a no-argument fn and return ms."""
    if not cuda:
        return _wall_timer, _wall_timer
    import triton.testing

    from skipbench_kernels.tune import cuda_graph_timer

    def plain(fn):
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))

    return cuda_graph_timer, plain


def copy_bandwidth(device: str, timer, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def build_layer(shape: dict, device: str, seed: int = 0) -> dict:
    """FP8 layer, its BF16 dequantisation, and a router (random, DeepSeek-V3 routing)."""
    from skipbench_kernels.reference import dequant_blocks
    from skipbench_kernels.tune import random_layer

    e, h, i = shape["experts"], shape["hidden"], shape["intermediate"]
    w13, w2, scales = random_layer(e, h, i, "fp8", device, seed)
    w13_bf16 = torch.empty(w13.shape, dtype=torch.bfloat16, device=device)
    w2_bf16 = torch.empty(w2.shape, dtype=torch.bfloat16, device=device)
    for e0 in range(0, e, 8):  # dequantise a few experts at a time (fp32 staging)
        w13_bf16[e0 : e0 + 8] = dequant_blocks(w13[e0 : e0 + 8], scales["w13_scale"][e0 : e0 + 8])
        w2_bf16[e0 : e0 + 8] = dequant_blocks(w2[e0 : e0 + 8], scales["w2_scale"][e0 : e0 + 8])
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    # With activations of mean 1 (route()), router logits are about N(-6, 2^2): the top-8
    # scores sit in sigmoid's exponential tail and spread as a trained router's do
    # (threshold 0.3 then keeps about 5 of 8 slots), instead of all saturating near 1.
    router = torch.randn(e, h, generator=gen, device=device) * 2 / (2 * h) ** 0.5 - 6 / h
    bias = torch.randn(e, generator=gen, device=device) * 1e-3
    return dict(w13=w13, w2=w2, scales=scales, w13_bf16=w13_bf16, w2_bf16=w2_bf16, router=router, bias=bias, gen=gen)


def route(layer: dict, shape: dict, batch: int):
    from skipbench_kernels.reference import deepseek_route

    x = torch.randn(batch, shape["hidden"], generator=layer["gen"], device=layer["router"].device) + 1
    ids, w = deepseek_route(x, layer["router"], layer["bias"], shape["top_k"], shape["n_group"], shape["topk_group"])
    return x.bfloat16(), ids, w


def check(layer: dict, shape: dict, meths: dict, rules: dict) -> list[dict]:
    """Every method against the float64 reference on one routed batch per rule (dense, top2)."""
    from skipbench_kernels.moe_triton import moe_triton
    from skipbench_kernels.reference import moe_reference

    x, ids, w = route(layer, shape, CHECK_BATCH)
    out = []
    for rule in ("dense", "top2"):
        keep = rules[rule](ids, w)
        ref8 = moe_reference(x, layer["w13"], layer["w2"], ids, w, keep, **layer["scales"], quantize_activations=True,
                             compute_dtype=torch.float64)  # fmt: skip
        ref16 = moe_reference(x, layer["w13_bf16"], layer["w2_bf16"], ids, w, keep, compute_dtype=torch.float64)
        cases = {name: (m.fn(x, ids, w, keep), ref8 if m.weight_dtype == "fp8" else ref16, TOLERANCE["fp8"]
                        if m.weight_dtype == "fp8" else TOLERANCE["baseline"]) for name, m in meths.items()}  # fmt: skip
        bf16_kernel = moe_triton(x, layer["w13_bf16"], layer["w2_bf16"], ids, w, keep)
        cases["bf16_kernel"] = (bf16_kernel, ref16, TOLERANCE["bf16"])
        for name, (got, ref, tol) in cases.items():
            err = float((got.double() - ref).abs().max() / ref.abs().max())
            out.append(dict(method=name, rule=rule, batch=CHECK_BATCH, max_rel_err=err, tolerance=tol, passed=err < tol))
            log.info("check %-16s %-6s rel err %.2e (tol %.0e) %s", name, rule, err, tol, "ok" if err < tol else "FAIL")
    return out


def tune_configs(layer, shape, timer, budget_s: float):
    from skipbench_kernels.moe_triton import moe_triton
    from skipbench_kernels.tune import reference_checker, tune

    tuned = []
    check = reference_checker(layer["w13"], layer["w2"], layer["scales"])  # every config vs float64 before timing
    for b in shape["tune_batches"]:
        x, ids, w = route(layer, shape, b)

        def step(cfg, x=x, ids=ids, w=w):
            return lambda: moe_triton(x, layer["w13"], layer["w2"], ids, w, None, **layer["scales"], config=cfg)

        tuned.append(tune(step, True, shape["hidden"], shape["intermediate"], b, shape["top_k"], shape["experts"],
                          check, TOLERANCE["fp8"], timer=timer, budget_s=budget_s / len(shape["tune_batches"])))  # fmt: skip
    return tuned


def time_rows(layer, shape, meths, rules, timers, bw, deadline, row_log) -> list[dict]:
    from skipbench_kernels.reference import distinct_experts

    h, i = shape["hidden"], shape["intermediate"]
    expert_bytes = {"fp8": 3 * h * i + 4 * 3 * h * i // 128**2, "bf16": 2 * 3 * h * i}
    rows = []
    for batch in shape["batches"]:
        x, ids, w = route(layer, shape, batch)
        every = torch.ones_like(ids, dtype=torch.bool)
        for rule, keep_fn in rules.items():
            keep = keep_fn(ids, w)
            for name, m in meths.items():
                loaded = distinct_experts(ids, keep if m.skips else every)
                row = dict(method=name, batch=batch, rule=rule, slots=int(keep.sum()), distinct_experts=loaded,
                           bytes=loaded * expert_bytes[m.weight_dtype], ms=math.nan, status="ok")  # fmt: skip
                if time.monotonic() > deadline:
                    row["status"] = "not run: time budget"
                else:
                    row["ms"], row["status"] = _time_one(lambda: m.fn(x, ids, w, keep), m.graph_safe, timers)
                row["floor_ms"] = row["bytes"] / bw * 1e3
                row["bw_share"] = row["floor_ms"] / row["ms"]
                row_log.write(row)
                rows.append(row)
                log.info("%-16s b=%-4d %-13s %3d experts %8.1f MB %9.4f ms  floor %.4f  bw %5.1f%%  %s", name, batch,
                         rule, loaded, row["bytes"] / 1e6, row["ms"], row["floor_ms"], 100 * row["bw_share"],
                         row["status"])  # fmt: skip
    return _saving_shares(rows, bw)


def _time_one(fn, graph_safe: bool, timers) -> tuple[float, str]:
    """(ms, status). A failed graph capture falls back to plain timing; any other failure
    is recorded in the row, so one broken method does not lose the others' rows."""
    graph_timer, plain_timer = timers
    if graph_safe:
        try:
            return graph_timer(fn), "ok"
        except Exception as exc:
            note = f"ok, no CUDA graph ({type(exc).__name__})"
    else:
        note = "ok"
    try:
        return plain_timer(fn), note
    except Exception as exc:
        return math.nan, f"error: {type(exc).__name__}: {exc}"[:300]


def _saving_shares(rows: list[dict], bw: float) -> list[dict]:
    """saving_share = time saved / (bytes saved / bandwidth), against the same method's dense row."""
    dense = {(r["method"], r["batch"]): r for r in rows if r["rule"] == "dense"}
    for r in rows:
        d = dense.get((r["method"], r["batch"]))
        saved_bytes = d["bytes"] - r["bytes"] if d else 0
        ideal_ms = saved_bytes / bw * 1e3
        r["saving_share"] = (d["ms"] - r["ms"]) / ideal_ms if d and saved_bytes > 0 else math.nan
        r["speedup_vs_dense"] = d["ms"] / r["ms"] if d else math.nan
    return rows


def write_outputs(out: Path, rows: list[dict], meta: dict, parts: list[dict] = ()) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    if parts:
        pf = pd.DataFrame(parts)
        pf.to_csv(out / ".parts.csv.tmp", index=False)
        (out / ".parts.csv.tmp").replace(out / "parts.csv")
        wide = pf.pivot_table(index=["batch", "rule"], columns="part", values="ms", sort=False).reset_index()
        parts_md = "\n\nPer launch, ms (`layout` alone; `prepare`, `gate_up`, `down`: the three launches; `layer`: all; " \
                   "`vllm_fused_moe`: vLLM's fused MoE, see parts.csv notes):\n\n" + _markdown(wide)
        notes = pf[pf["part"] == "vllm_fused_moe"][["batch", "rule", "status", "note"]]
        parts_md += "\n\nvLLM's fused MoE:\n\n" + _markdown(notes)
    else:
        parts_md = ""
    if not rows:
        (out / "summary.md").write_text(f"{meta.get('device_name')}, {meta.get('date')}: {meta.get('aborted', 'no rows')}\n")
        (out / "bench.json").write_text(json.dumps(meta, indent=1, default=str))
        return
    df = pd.DataFrame(rows)
    for name, frame in (("bench_rows", df), ("kernel_bench", df[df["method"] == "skip_kernel"])):
        tmp = out / f".{name}.csv.tmp"
        frame.to_csv(tmp, index=False)
        tmp.replace(out / f"{name}.csv")  # atomic: a killed run leaves the previous file
    try:
        df.to_parquet(out / ".bench_rows.parquet.tmp", index=False)
        (out / ".bench_rows.parquet.tmp").replace(out / "bench_rows.parquet")
    except ImportError:
        log.warning("no parquet engine: CSV only")
    cols = ["method", "batch", "rule", "distinct_experts", "bytes", "ms", "floor_ms", "bw_share", "saving_share", "status"]
    table = df[cols].assign(bytes=(df["bytes"] / 1e6).round(1)).rename(columns={"bytes": "MB"})
    head = (f"{meta['device_name']}, {meta['date']}, copy bandwidth {meta['bandwidth_gbs']:.0f} GB/s, "
            f"torch {meta['torch']}, triton {meta['triton']}\n\n")  # fmt: skip
    (out / "summary.md").write_text(head + _markdown(table) + parts_md + "\n")
    (out / "bench.json").write_text(json.dumps(meta, indent=1, default=str))


def _markdown(df) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU through the Triton interpreter")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall budget for the whole run")
    p.add_argument("--tune-share", type=float, default=0.25, help="share of the budget spent tuning tile configs")
    p.add_argument("--parts-share", type=float, default=0.2, help="share of the budget for timing each launch alone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    start = time.monotonic()
    cuda = torch.cuda.is_available()
    if not (cuda or args.smoke):
        p.error("no CUDA GPU: only --smoke runs on CPU")
    _import_kernels(use_interpreter=not cuda)
    import triton

    from skipbench_kernels.baselines import methods, skip_rules
    from skipbench_kernels.bench_parts import RowLog, time_parts
    from skipbench_kernels.tune import config_for, configs_to_json

    device, shape = ("cuda" if cuda else "cpu"), (SMOKE if args.smoke else FULL)
    torch.manual_seed(0)
    graph_timer, plain_timer = _timers(cuda)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), device=device,
                device_name=torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
                torch=torch.__version__, triton=triton.__version__, smoke=args.smoke, shape=shape,
                interpreter=not cuda, budget_s=args.budget_s)  # fmt: skip
    layer = build_layer(shape, device)
    rules = skip_rules(shape["experts"])
    tuned = []
    meths = methods(layer, lambda tokens: config_for(tuned, tokens))
    meta["checks"] = checks = check(layer, shape, meths, rules)
    if not all(c["passed"] for c in checks if c["method"] in ("skip_kernel", "weight0_kernel", "bf16_kernel")):
        meta["aborted"] = "kernel failed its correctness check: nothing timed"
        write_outputs(args.out, [], meta)
        log.error(meta["aborted"])
        return 1
    bw = copy_bandwidth(device, plain_timer, (1 << 30) if cuda else (64 << 20))
    meta["bandwidth_gbs"] = bw / 1e9
    log.info("copy bandwidth %.0f GB/s; setup took %.0f s", bw / 1e9, time.monotonic() - start)
    tuned += tune_configs(layer, shape, graph_timer, min(args.budget_s * args.tune_share, shape.get("tune_s_max", math.inf)))
    meta["configs"] = json.loads(configs_to_json(tuned))
    log.info("tuned at %.0f s", time.monotonic() - start)
    # The launches one by one first (batches 1 and 16), then every (method, batch, rule);
    # each row is appended to its live CSV as soon as it is measured.
    parts = time_parts(layer, shape, rules, route, lambda b: config_for(tuned, b), graph_timer,
                       RowLog(args.out / "parts_live.csv"),
                       min(start + args.budget_s, time.monotonic() + args.parts_share * args.budget_s),
                       TOLERANCE["fp8"])  # fmt: skip
    rows = time_rows(layer, shape, meths, rules, (graph_timer, plain_timer), bw, start + args.budget_s,
                     RowLog(args.out / "rows_live.csv"))  # fmt: skip
    meta["seconds"] = time.monotonic() - start
    meta["not_run"] = sum(not r["status"].startswith("ok") for r in rows)
    write_outputs(args.out, rows, meta, parts)
    log.info("done in %.0f s: %d rows (%d not run) in %s", meta["seconds"], len(rows), meta["not_run"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
