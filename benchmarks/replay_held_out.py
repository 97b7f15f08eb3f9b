"""Held-out error of the this-machine replay model, and the measured speedups, from a replay table.

    python benchmarks/replay_held_out.py results/<run>/replay/<benchmark>.parquet [--target 0.2]

Prints one row per (variant, concurrency) of the measured paths: measured ms per step,
speedup over dense, predicted ms, whether the variant was held out of the fit, and the
error; then the median and max held-out |error| of the predicted speedup per path against the target (issue 22:
<= 20% on the embedded default). A benchmark, not a test: it prints, it does not fail.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from skipbench.io import read_table  # noqa: E402
from skipbench.speed.replay import REPLAY_SCHEMA  # noqa: E402
from skipbench.speed.replay_fit import held_out_error  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("replay", type=Path)
    p.add_argument("--target", type=float, default=0.20)
    args = p.parse_args(argv)
    t = read_table(args.replay, REPLAY_SCHEMA).to_pandas()
    m = t[t["status"] == "measured"]
    for (path, device, width), g in m.groupby(["path", "device", "expert_shape"]):
        print(f"\nrouted experts, replayed on {device} {path}, experts {width} ({g['layers'].iloc[0]} MoE layers a step)")
        cols = ["variant", "concurrency", "distinct_experts", "pairs", "ms_per_step", "speedup", "predicted_ms",
                "held_out", "prediction_error"]  # fmt: skip
        print(g[cols].sort_values(["concurrency", "variant"]).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for r in held_out_error(t).itertuples():
        verdict = "met" if r.median <= args.target else "NOT met"
        print(f"\nheld-out |error| of the predicted speedup on {r.path}: median {100 * r.median:.0f}%, "
              f"max {100 * r.max:.0f}% over {r.count} rows (target median <= {100 * args.target:.0f}%: {verdict}); "
              f"of the ms per step: median {100 * r.ms_median:.0f}% (load drift between the kept fit and the replay)")
    for why in sorted(set(t.loc[t["status"] != "measured", "path"] + ": " + t.loc[t["status"] != "measured", "status"])):
        print(why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
