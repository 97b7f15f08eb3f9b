"""Predictions beside published serving measurements (stage: roofline; ours).

Reads config/hardware/published_serving.yaml: engines (serving.ServingTerms with their
sources, one term fitted on a reading marked `calibrates`) and readings (source, settings,
published figure). One row per (reading, assumption) with the error; a reading whose
hardware has no calibration of its layout gets the bytes floor only, and says so.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pyarrow as pa
import yaml

from skipbench.speed.costmodel import pick_calibration
from skipbench.io import write_table
from skipbench.speed.serving import (ServingTerms, Setting, calibrate_launch, dp_ep_floor_step_ms, max_batch_at_speed,
                               tp_decode_terms, uniform_distinct)  # fmt: skip
from skipbench.speed.specs import DEEPSEEK_V3_CONFIG, HARDWARE_DIR, ModelShape, load_profile

PUBLISHED = HARDWARE_DIR / "published_serving.yaml"
# One row per (published figure, reading of an unstated setting).
PUBLISHED_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # where the figure was published
        ("setting", pa.string()),  # model, engine, GPUs, parallel layout, lengths, concurrency
        ("metric", pa.string()),  # "mean TPOT ms" or "output tok/s per node"
        ("published", pa.float64()),  # the published figure
        ("predicted", pa.float64()),  # skipbench's prediction of it
        ("error", pa.float64()),  # predicted / published - 1
        ("profile", pa.string()),  # profiles used, and whether this reading was held out or fitted
        ("assumptions", pa.string()),  # what the source leaves open and we assumed
    ]
)
COLUMNS = PUBLISHED_SCHEMA.names


def _setting(r: dict, c: int, ratio: float) -> Setting:
    """Mean lengths under the benchmark's random range ratio (uniform in [ratio, 1] x nominal)."""
    m = (1 + ratio) / 2
    return Setting(gpus=8, concurrency=c, context=m * r["isl"] + m * r["osl"] / 2, isl=m * r["isl"], osl=m * r["osl"])


def _engine(name: str, cfg: dict, readings: list[dict], shape: ModelShape, ratio: float, hardware_dir):
    """(profile, routed CostModel, ServingTerms with layer_launch_ms fitted on its reading)."""
    e = cfg["engines"][name]
    profile = load_profile(e["hardware"], hardware_dir)
    cost, why = pick_calibration(load_profile(e["routed_calibration"], hardware_dir).costs, shape.weight_dtype,
                                 shape.hidden, shape.moe_inter)  # fmt: skip
    if cost is None:
        raise ValueError(f"engine {name}: {why}")
    terms = ServingTerms(e["engine"], 0.0, float(e["allreduce_ms"]["value"]), float(e["link_bandwidth"]["value"]),
                         {k: e[k]["source"] for k in ("allreduce_ms", "link_bandwidth", "layer_launch_ms")})  # fmt: skip
    cal = next(r for r in readings if r["id"] == e["layer_launch_ms"]["calibrate_on"])
    s = _setting(cal, cal["concurrency"], ratio)
    distinct = uniform_distinct(s.concurrency, shape.n_experts, shape.top_k)
    launch = calibrate_launch(shape, profile, cost, terms, s, cal["published"], distinct)
    return profile, cost, ServingTerms(terms.engine, launch, terms.allreduce_ms, terms.link_bandwidth, terms.sources)


def published_table(path: str | Path = PUBLISHED, hardware_dir: str | Path = HARDWARE_DIR) -> pd.DataFrame:
    """COLUMNS rows: every published figure next to the DeepSeek-V3 shape's prediction.
    A malformed file raises ValueError naming it (a small committed yaml: no size bound needed
    beyond safe_load's)."""
    try:
        return _table(yaml.safe_load(Path(path).read_text()), hardware_dir)
    except (KeyError, TypeError, ValueError, IndexError, StopIteration, AttributeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: malformed published-serving file: {type(e).__name__}: {e}") from e


def _table(cfg: dict, hardware_dir) -> pd.DataFrame:
    readings, assume = cfg["readings"], cfg["assumptions"]
    shape = ModelShape.from_config(DEEPSEEK_V3_CONFIG)  # R1 and R1-0528 share V3's architecture
    rows = []
    for r in readings:
        if r["metric"] == "mean_tpot_ms":
            conc = r["concurrency"] if isinstance(r["concurrency"], list) else [r["concurrency"]]
            pub = r["published"] if isinstance(r["published"], list) else [r["published"]]
            for ratio, (c, p) in itertools.product(assume["random_range_ratio"], zip(conc, pub)):
                profile, cost, terms = _engine(r["engine"], cfg, readings, shape, ratio, hardware_dir)
                s = _setting(r, c, ratio)
                pred = tp_decode_terms(shape, profile, cost, terms, s, uniform_distinct(c, shape.n_experts, shape.top_k))
                role = "fits layer_launch_ms" if r.get("calibrates") else "held out"
                rows.append(dict(
                    source=r["source"], setting=f"{r['model']}, {terms.engine}, {r['isl']}/{r['osl']}, {c} concurrent",
                    metric="mean TPOT ms", published=p, predicted=pred["tpot_ms"],
                    profile=f"{profile.name} + {r['engine']} (calibrated: {role})",
                    assumptions=f"random range ratio {ratio}; no speculative decoding (as launched); routing uniform "
                                f"({s.concurrency} tokens: {uniform_distinct(c, shape.n_experts, shape.top_k):.0f} "
                                f"distinct experts/layer); launch {terms.layer_launch_ms * 1e3:.0f} us/layer",
                ))  # fmt: skip
        elif r["metric"] == "output_tok_s_per_node":
            profile = load_profile(r["hardware"], hardware_dir)
            for mtp in assume["mtp_tokens_per_step"]:
                b = max_batch_at_speed(lambda b: dp_ep_floor_step_ms(shape, profile, 144, b, r["context"], 32),
                                       mtp, r["user_tok_s"])  # fmt: skip
                rows.append(dict(
                    source=r["source"], setting=f"{r['model']}, {r['layout']}, {r['user_tok_s']} tok/s per user",
                    metric="output tok/s per node", published=r["published"], predicted=8 * b * r["user_tok_s"],
                    profile=f"{profile.name}: no calibration of this layout: bytes floor only (an upper bound on "
                            "throughput; no launch or communication cost)",
                    assumptions=f"MTP {'on, ' + str(mtp) + ' tokens/step' if mtp > 1 else 'off'}; {b} sequences per GPU "
                                f"(the most the floor allows at {r['user_tok_s']} tok/s per user); context {r['context']}",
                ))  # fmt: skip
        else:
            raise ValueError(f"reading {r.get('id')}: unknown metric {r['metric']!r}")
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "error"])
    out.insert(5, "error", out["predicted"] / out["published"] - 1)
    return out


def write_published(out_path, path: str | Path = PUBLISHED, hardware_dir: str | Path = HARDWARE_DIR) -> pa.Table:
    """The roofline stage's published-serving table (PUBLISHED_SCHEMA), written atomically."""
    table = published_table(path, hardware_dir)
    return write_table(out_path, pa.Table.from_pandas(table, preserve_index=False), PUBLISHED_SCHEMA)
