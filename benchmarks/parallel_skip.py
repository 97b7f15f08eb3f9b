"""Skip speedups of the routed experts under tensor and expert parallel, from routing.

    .venv/bin/python benchmarks/parallel_skip.py                      # DeepSeek-V3, synthetic routing
    .venv/bin/python benchmarks/parallel_skip.py --traces results/<run>/infer/humaneval \
        --config results/<run>/model/config.json --devices 4           # a run's own traces

Expert parallel: a step waits for its busiest device (skipbench.speed.parallel; ours). Prints, per
variant and concurrency, routed-expert ms per layer and step and the speedup over dense under
TP and EP, at the bytes floor of the H200's measured copy bandwidth and, where the model's
dtype and expert shape have one, the H200 FP8 calibration (torch._scaled_grouped_mm without
CUDA graphs: its ~1 ms per-layer launch cost included, as today's kernel pays it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from skipbench.speed.costmodel import pick_calibration
from skipbench.speed.parallel import parallel_speedups, synthetic_deepseek_routing
from skipbench.speed.specs import DEEPSEEK_V3_CONFIG, ModelShape, load_profile


def _traced(folder: Path) -> dict:
    """{variant: trace arrays} of <folder>/<variant>/trace.parquet."""
    from skipbench.io import read_table
    from skipbench.speed.traffic import trace_arrays

    return {p.parent.name: trace_arrays(read_table(p)) for p in sorted(folder.glob("*/trace.parquet"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, help="folder of <variant>/trace.parquet (default: synthetic DeepSeek-V3)")
    ap.add_argument("--config", help="config.json of the traced model (with --traces)")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    args = ap.parse_args()
    shape = ModelShape.from_config(args.config or DEEPSEEK_V3_CONFIG)
    if args.traces:
        variants, routing = _traced(args.traces), f"traced routing of {args.traces}"
    else:  # 64 sequences x 32 decode tokens x 2 layers per variant: router_topk k of DeepSeek-V3's own selection
        variants = {("dense" if k == 8 else f"rtop{k}"): synthetic_deepseek_routing(64, 33, 2, k) for k in (8, 6, 4, 2)}
        routing = "synthetic routing (uniform logits through DeepSeek-V3's group-limited top-8)"
    h200, measured = load_profile("h200"), load_profile("h200-measured")
    dtype = shape.weight_dtype
    cost, why = pick_calibration(h200.costs, dtype, shape.hidden, shape.moe_inter)
    ends = {"bytes floor": None} | ({"calibrated (H200 FP8 grouped_mm, no CUDA graphs)": cost} if cost else {})
    print(f"{shape.family} {dtype} experts {shape.hidden}x{shape.moe_inter}, {shape.n_experts} experts top-{shape.top_k}, "
          f"{args.devices} devices; {routing}" + (f"; {why}: bytes floor only" if why else ""))  # fmt: skip
    for name, c in ends.items():
        t = parallel_speedups(variants, args.concurrency, args.devices, shape.n_experts, shape.expert_bytes(dtype),
                              shape.expert_flops, c, measured.bandwidth, measured.flops(dtype))  # fmt: skip
        wide = t.pivot_table(index=["variant", "concurrency"], columns="layout", values=["speedup", "routed_ms"])
        wide[("busiest", "ep")] = t[t["layout"] == "ep"].set_index(["variant", "concurrency"])["ep_busiest_distinct"]
        print(f"\n{name}: routed-expert ms per MoE layer and step, speedup over dense (EP: busiest device)")
        with pd.option_context("display.width", 200):
            print(wide.to_string(float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
