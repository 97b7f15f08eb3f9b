"""Published serving measurements next to skipbench's predictions, one row per figure.

    .venv/bin/python benchmarks/published_serving.py [--out table.csv]

Prints every calibrated profile's fit (in-sample and leave-one-batch-out error) first, then
the table of skipbench.speed.published (config/hardware/published_serving.yaml).
"""

from __future__ import annotations

import argparse

import pandas as pd
import yaml

from skipbench.io import write_text
from skipbench.speed.published import PUBLISHED, published_table
from skipbench.speed.specs import HARDWARE_DIR, load_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", default=str(PUBLISHED))
    ap.add_argument("--out", help="write the table as CSV here")
    args = ap.parse_args()
    for path in sorted(HARDWARE_DIR.glob("*.yaml")):  # every profile with committed calibration data
        if "calibration" in (yaml.safe_load(path.read_text()) or {}):
            for cost in load_profile(path.stem).costs:
                print(f"fit {path.stem}: {cost.source}")
    table = published_table(args.published)
    with pd.option_context("display.max_colwidth", 60, "display.width", 250):
        print(table.assign(error=table["error"].map("{:+.0%}".format)).to_string(index=False))
    if args.out:
        write_text(args.out, table.to_csv(index=False))


if __name__ == "__main__":
    main()
