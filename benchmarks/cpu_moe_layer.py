"""CPU MoE layer bench: a real skip path (a skipped expert is never computed), measured.

One MoE layer at DeepSeek-V2-Lite expert shape (hidden 2048, expert intermediate 1408,
64 experts, top-6) at decode batches 1-16 under dense, top-k and threshold rules
(skipbench/speed/cpu_moe.py). Prints measured time vs bytes, the `this-machine` cost model
fitted on the dense and top-2 rows, and predicted vs measured savings of every rule, the
held-out rules (top-4, threshold) testing the fit. Writes bench.csv / savings.csv to --out.

    nice .venv/bin/python benchmarks/cpu_moe_layer.py --out results/cpu_moe_layer
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from skipbench.speed.cpu_moe import EagerMoE, MoeShape, bench_layer, fit_this_machine, savings
from skipbench.infer.engines import device_name
from skipbench.speed.specs import measure_profile

FIT_RULES = ("dense", "topk:2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--rules", nargs="+", default=["dense", "topk:4", "topk:2", "threshold:0.5"])
    ap.add_argument("--calls", type=int, default=7, help="timed calls per (batch, rule), fresh routing each")
    ap.add_argument("--dtype", default="float32", help="float32: this CPU has no native bf16 matmul")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed on a shared machine)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    shape = MoeShape(dtype=args.dtype)
    profile = measure_profile("this-machine", copy_mib=256, matmul_n=1024, repeats=5)
    layer = EagerMoE(shape)
    bench = bench_layer(layer, args.batches, args.rules, calls=args.calls)
    source = f"{device_name()}: benchmarks/cpu_moe_layer.py, fit on {'+'.join(FIT_RULES)}"
    cost = fit_this_machine(bench, shape, profile.bandwidth, source, fit_rules=FIT_RULES)
    sav = savings(bench, cost, shape, profile.bandwidth)

    pd.set_option("display.width", 200)
    print(f"device {device_name()}, {bench['threads'].iloc[0]} threads, {args.dtype}, copy bandwidth "
          f"{profile.bandwidth / 1e9:.1f} GB/s, expert {shape.expert_bytes / 2**20:.1f} MiB, {args.calls} calls each")  # fmt: skip
    print(f"this-machine cost model (fit on {', '.join(FIT_RULES)} rows): {cost.layer_ms:.3f} ms/layer + "
          f"{cost.expert_ms:.3f} ms/expert + bytes at {cost.bandwidth / 1e9:.1f} GB/s + pairs at "
          f"{cost.rate / 1e9:.1f} GFLOP/s; in-sample error <= {100 * cost.max_abs_error:.0f}%")  # fmt: skip
    table = sav.assign(**{c: (100 * sav[c]).round(1) for c in ("measured_saving", "ideal_saving", "predicted_saving",
                                                               "prediction_error")})  # fmt: skip
    table["held_out"] = ~table["rule"].isin(FIT_RULES)
    print(table[["batch", "rule", "distinct_experts", "slots", "ms", "floor_ms", "predicted_ms", "measured_saving",
                 "ideal_saving", "predicted_saving", "share_of_ideal", "prediction_error", "held_out"]]
          .to_string(index=False, float_format=lambda v: f"{v:.2f}"))  # fmt: skip
    b1 = sav[(sav["batch"] == 1) & (sav["rule"] == "topk:2")]
    if len(b1):
        print(f"target: batch 1 top-2 vs top-6 measured saving = {100 * b1['share_of_ideal'].iloc[0]:.0f}% of the "
              f"ideal bytes saving (>= 70% wanted)")  # fmt: skip
    held = sav[~sav["rule"].isin(FIT_RULES)]
    print(f"target: held-out predictions within {100 * held['prediction_error'].abs().max():.0f}% of measured "
          f"time (<= 20% wanted)")  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        bench.to_csv(args.out / "bench.csv", index=False)
        sav.to_csv(args.out / "savings.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
