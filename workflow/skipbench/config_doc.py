"""config/README.md from the config schema (workflow/schemas/config.schema.yaml), so the
documentation of every key is the schema's own; tests/test_config_doc.py keeps them in sync.

    python -m skipbench.config_doc > config/README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

HEADER = """# Configuration reference

Generated from `workflow/schemas/config.schema.yaml` by `python -m skipbench.config_doc >
config/README.md` (a test fails when they differ). `config/config.yaml` is the embedded
default; `config/presets/*.yaml` are real models (`snakemake --configfile
config/presets/NAME.yaml`). Values given with `--config` are typed by this schema
(`--config 'variants={top3: {strategy: topk, k: 3}}'`); `skipbench run --variant
top3=topk:k=3` does the same. `<name>` stands for a key you choose.

| key | type | default | description |
|---|---|---|---|
"""


def _type(s: dict) -> str:
    if "enum" in s:
        return " \\| ".join(json.dumps(v) for v in s["enum"])
    if "const" in s:
        return json.dumps(s["const"])
    if "oneOf" in s:
        return " or ".join(_type(o) for o in s["oneOf"])
    t = s.get("type", "")
    t = " \\| ".join(t) if isinstance(t, list) else t
    if t == "array" and isinstance(s.get("items"), dict):
        return f"array of {_type(s['items'])}"
    return t or "any"


def _describe(s: dict) -> str:
    parts = [s.get("description", "")]
    parts += [o["description"] for o in s.get("oneOf", []) if "description" in o]
    bounds = [f"{k} {s[k]}" for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "pattern") if k in s]
    if s.get("required"):
        bounds.append(f"requires {', '.join(s['required'])}")
    return "; ".join(p for p in parts + bounds if p).replace("|", "\\|").replace("\n", " ")


def rows(schema: dict, prefix: str = "") -> list[str]:
    out = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        out.append(f"| `{path}` | {_type(sub)} | {default} | {_describe(sub)} |")
        out += rows(sub, path + ".")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and (extra.get("properties") or extra.get("type") == "object"):
        out.append(f"| `{prefix}<name>` | {_type(extra)} |  | {_describe(extra)} |")
        out += rows(extra, f"{prefix}<name>.")
    return out


def render(schema: dict | None = None) -> str:
    schema = schema or yaml.safe_load(SCHEMA.read_text())
    return HEADER + "\n".join(rows(schema)) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
