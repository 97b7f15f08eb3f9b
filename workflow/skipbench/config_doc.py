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


# JSON-schema keywords this schema uses: any other key in a property's schema is a mistake,
# typically an unquoted comma in a flow mapping (`{description: cap per (sample, split) run}`
# is the description "cap per (sample" and a key "split) run").
KEYWORDS = {"$schema", "description", "type", "additionalProperties", "required", "properties", "default", "pattern",
            "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "items", "minItems", "oneOf",
            "const", "propertyNames", "minProperties"}  # fmt: skip
BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "pattern", "minItems")


def _describe(s: dict) -> str:
    parts = [s.get("description", "")]
    parts += [o["description"] for o in s.get("oneOf", []) if "description" in o]
    bounds = [f"{k} {s[k]}" for k in BOUNDS if k in s]
    items = s.get("items") if isinstance(s.get("items"), dict) else {}
    bounds += [f"each item {k} {items[k]}" for k in BOUNDS if k in items]
    parts += [f"each item: {items['description']}"] if "description" in items else []
    if s.get("required"):
        bounds.append(f"requires {', '.join(s['required'])}")
    return "; ".join(p for p in parts + bounds if p).replace("|", "\\|").replace("\n", " ")


def stray_keys(schema, path: str = "") -> list[str]:
    """Keys of sub-schemas that are no JSON-schema keyword ('path: key'); [] when sound."""
    if isinstance(schema, list):
        return [k for i, s in enumerate(schema) for k in stray_keys(s, f"{path}[{i}]")]
    if not isinstance(schema, dict):
        return []
    out = [f"{path}: {k!r}" for k in schema if k not in KEYWORDS]
    for k, v in schema.items():
        if k == "properties":
            out += [x for name, sub in v.items() for x in stray_keys(sub, f"{path}.{name}".lstrip("."))]
        elif k in ("items", "additionalProperties", "oneOf", "propertyNames"):
            out += stray_keys(v, f"{path}.{k}")
    return out


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
    if stray := stray_keys(schema):
        raise ValueError(f"{SCHEMA}: keys that are no schema keyword (quote a description with a comma): {stray}")
    return HEADER + "\n".join(rows(schema)) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
