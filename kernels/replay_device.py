"""The measured replay at DeepSeek-V3's layer shape on a GPU: the skip variants' routing over
several decode steps, through the v2 Triton skip kernel (FP8 and BF16 weights) and
torch._grouped_mm (BF16) side by side, at batch 1, 16 and 128.

    python kernels/replay_device.py --out DIR [--budget-s 110]    # one GPU
    python kernels/replay_device.py --out DIR --smoke              # CPU rehearsal: tiny shapes, Triton interpreter

No DeepSeek-V3 trace exists on the device, so each step's routing is DeepSeek-V3's router
(grouped top-8, kernels/reference.deepseek_route) on fresh activations, and the variants are
the benchmark's skip rules (kernels/baselines.skip_rules: dense, top4, top2, NAEE threshold,
batch-aware). Every (batch, rule) is timed over `steps` routings, each method on the same
ones; ms is the mean over steps of each step's time (CUDA graph, L2 flushed: bench.py's timer).
Methods: triton_v2 fp8, triton_v2 bf16, grouped_mm bf16 (no FP8 grouped GEMM without row
scales). Files in DIR: replay_rows.csv (every row), and hardware_<device>_replay_<date>.csv,
the dated calibration for config/hardware/ (costmodel columns batch, rule, distinct_experts,
slots, ms, one row set per method and dtype, with the device and date in comment lines).
Shapes: T tokens, K slots, H hidden, I intermediate, E experts.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import re
import sys
import time
from pathlib import Path

import torch

from bench import FULL, SMOKE, _import_kernels, _markdown, _time_one, _timers, build_layer, copy_bandwidth, route

log = logging.getLogger("replay_device")
BATCHES = {"full": (1, 16, 128), "smoke": (1, 4)}
RULES = ("dense", "top4", "top2", "threshold0.3", "batch_aware2")


def replay_methods(layer: dict) -> dict:
    """name -> (fn(x, ids, w, keep), weight dtype): the skip kernel on FP8 and BF16 weights, grouped_mm BF16."""
    from skipbench_kernels.baselines import grouped_mm_moe
    from skipbench_kernels.moe_triton import moe_triton

    fp8, bf16 = (layer["w13"], layer["w2"]), (layer["w13_bf16"], layer["w2_bf16"])
    return {
        "triton_v2_fp8": (lambda x, ids, w, keep: moe_triton(x, *fp8, ids, w, keep, **layer["scales"]), "fp8"),
        "triton_v2_bf16": (lambda x, ids, w, keep: moe_triton(x, *bf16, ids, w, keep), "bf16"),
        "grouped_mm_bf16": (lambda x, ids, w, keep: grouped_mm_moe(x, *bf16, ids, w, keep), "bf16"),
    }


def replay_rows(layer, shape, batches, steps: int, timers, bw: float, deadline: float, only=RULES) -> list[dict]:
    """One row per (method, batch, rule): mean over `steps` routed steps; past the deadline, 'not run'."""
    from skipbench_kernels.baselines import skip_rules
    from skipbench_kernels.reference import distinct_experts

    h, i = shape["hidden"], shape["intermediate"]
    expert_bytes = {"fp8": 3 * h * i + 4 * 3 * h * i // 128**2, "bf16": 2 * 3 * h * i}
    rules = {name: fn for name, fn in skip_rules(shape["experts"]).items() if name in only}
    meths, rows = replay_methods(layer), []
    for batch in batches:
        routed = [route(layer, shape, batch) for _ in range(steps)]  # steps x (x [T,H], ids [T,K], w [T,K])
        for rule, keep_fn in rules.items():
            keeps = [keep_fn(ids, w) for _, ids, w in routed]
            distinct = sum(distinct_experts(ids, k) for (_, ids, _), k in zip(routed, keeps)) / steps
            slots = sum(int(k.sum()) for k in keeps) / steps
            for name, (fn, dtype) in meths.items():
                row = dict(method=name, dtype=dtype, batch=batch, rule=rule, steps=steps, distinct_experts=distinct,
                           slots=slots, bytes=distinct * expert_bytes[dtype], ms=math.nan, status="ok")  # fmt: skip
                if time.monotonic() > deadline:
                    row["status"] = "not run: time budget"
                else:
                    timed = [_time_one(lambda: fn(x, ids, w, k), True, timers) for (x, ids, w), k in zip(routed, keeps)]
                    row["ms"] = sum(t for t, _ in timed) / steps
                    row["status"] = next((s for _, s in timed if s != "ok"), "ok")
                row["floor_ms"] = row["bytes"] / bw * 1e3
                rows.append(row)
                log.info("%-16s b=%-4d %-13s %6.1f experts %9.4f ms floor %.4f %s", name, batch, rule, distinct,
                         row["ms"], row["floor_ms"], row["status"])  # fmt: skip
    dense = {(r["method"], r["batch"]): r["ms"] for r in rows if r["rule"] == "dense"}
    for r in rows:
        r["speedup_vs_dense"] = dense.get((r["method"], r["batch"]), math.nan) / r["ms"]
    return rows


def calibration_name(device_name: str, date: str) -> str:
    """File name of the dated calibration in config/hardware/."""
    return f"hardware_{re.sub(r'[^a-z0-9]+', '-', device_name.lower()).strip('-')}_replay_{date}.csv"


def write_outputs(out: Path, rows: list[dict], meta: dict) -> list[Path]:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    written = []
    cal = out / calibration_name(meta["device_name"], meta["date"][:10])
    for path, frame, head in ((out / "replay_rows.csv", df, ""),
                              (cal, df[df["status"].str.startswith("ok")],
                               f"# {meta['device_name']}, {meta['date']}: measured replay at DeepSeek-V3's layer "
                               f"shape (kernels/replay_device.py), {meta['steps']} DeepSeek-V3-routed steps per row; "
                               f"copy bandwidth {meta['bandwidth_gbs']:.0f} GB/s; torch {meta['torch']}\n")):  # fmt: skip
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(head + frame.to_csv(index=False))
        tmp.replace(path)  # atomic: a killed run leaves the previous file
        written.append(path)
    cols = ["method", "batch", "rule", "distinct_experts", "ms", "floor_ms", "speedup_vs_dense", "status"]
    (out / "summary.md").write_text(f"Measured replay, {meta['device_name']}, {meta['date']}\n\n" + _markdown(df[cols]) + "\n")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU through the Triton interpreter")
    p.add_argument("--budget-s", type=float, default=110.0, help="wall budget, layer build included")
    p.add_argument("--steps", type=int, default=None, help="routed steps per row (default 4; smoke 1)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 16 128 (smoke 1 4)")
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    start, cuda = time.monotonic(), torch.cuda.is_available()
    if not (cuda or args.smoke):
        p.error("no CUDA GPU: only --smoke runs on CPU")
    _import_kernels(use_interpreter=not cuda)
    device, shape = ("cuda" if cuda else "cpu"), (SMOKE if args.smoke else FULL)
    steps = args.steps or (1 if args.smoke else 4)
    torch.manual_seed(0)
    timers = _timers(cuda)
    layer = build_layer(shape, device)
    bw = copy_bandwidth(device, timers[1], (1 << 30) if cuda else (64 << 20))
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), steps=steps,
                device_name=torch.cuda.get_device_name() if cuda else "cpu-interpreter", torch=torch.__version__,
                bandwidth_gbs=bw / 1e9)  # fmt: skip
    log.info("layer built, bandwidth %.0f GB/s, at %.0f s", bw / 1e9, time.monotonic() - start)
    batches = args.batches or BATCHES["smoke" if args.smoke else "full"]
    rows = replay_rows(layer, shape, batches, steps, timers, bw, start + args.budget_s, args.rules)
    written = write_outputs(args.out, rows, meta)
    log.info("done in %.0f s: %d rows; calibration %s (copy to config/hardware/)", time.monotonic() - start,
             len(rows), written[-1].name)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
