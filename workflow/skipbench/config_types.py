"""Command-line config values typed by the config schema.

Snakemake parses `--config 'variants={top3: {strategy: topk, k: 3}}'` with YAML's
BaseLoader, which keeps every nested scalar a string ('3'), so validation then fails
with "'3' is not of type 'integer'". Here every string that its sub-schema rejects is
re-read as YAML and kept if that typed value is accepted; strings the schema wants stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator


def _sub_schema(schema: dict, key: str) -> dict | None:
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def typed(value: Any, schema: dict) -> Any:
    """`value` with strings re-read as YAML where `schema` needs a non-string."""
    if isinstance(value, dict):
        return {k: typed(v, sub) if (sub := _sub_schema(schema, k)) else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [typed(v, schema["items"]) for v in value]
    if isinstance(value, str):
        check = Draft202012Validator(schema)
        if check.is_valid(value):
            return value
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # validation reports it, naming the field
        if not isinstance(parsed, str) and check.is_valid(parsed):
            return parsed
    return value


def type_config(config: dict, schema_path: str | Path) -> None:
    """Type `config` (Snakemake's global dict, so in place) by the schema at `schema_path`."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    config.update(typed(config, schema))
