"""Where a config value came from: file and line of every key, so a planning error points at
the line to edit ("config/config.yaml:71: variants.dense.strategy = 'topk': ...") instead of
the Snakefile line that validated it.

The config Snakemake hands the Snakefile is a merge of the config files (later files win)
and `--config` values; a key path found in no file came from `--config` or a schema default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import yaml
from jsonschema import Draft202012Validator

MAX_CONFIG_BYTES = 1 << 20  # a config file is hand-written: a megabyte is far beyond any real one


class ConfigError(ValueError):
    """A config value the workflow cannot run with; the message says where, which and why."""


KeyPath = tuple  # ("variants", "dense", "strategy"); list items by index


def key_lines(path: str | Path) -> dict[KeyPath, int]:
    """Line (1-based) of every key path in a YAML file. Raises ConfigError with file and line
    for a syntax error or a mapping that repeats a key (PyYAML would keep the last silently)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file")
    try:
        root = yaml.compose(text.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {e.problem or e.context}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    lines: dict[KeyPath, int] = {}
    stack = [((), root)]
    while stack:  # iterative: a deeply nested file cannot exhaust the recursion limit
        prefix, node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(f"{path}:{line}: duplicate key {key!r} (first at line {seen[key]}) in "
                                      f"{'.'.join(map(str, prefix)) or 'the top level'}; YAML would keep only the last one")
                seen[key] = lines[prefix + (key,)] = line
                stack.append((prefix + (key,), value_node))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                stack.append((prefix + (i,), item))
    return lines


class ConfigSource:
    """The key lines of the config files, in Snakemake's merge order (later files win)."""

    def __init__(self, files: Iterable[str | Path]):
        self.files = [str(f) for f in files]
        self.lines: dict[KeyPath, tuple[str, int]] = {}
        for f in self.files:
            self.lines.update({k: (f, line) for k, line in key_lines(f).items()})

    def at(self, path: KeyPath) -> str:
        """'file:line' of the nearest enclosing key that a file sets, else where it came from."""
        p = tuple(path)
        while p:
            if p in self.lines:
                file, line = self.lines[p]
                return f"{file}:{line}"
            p = p[:-1]
        return f"{self.files[-1]} (--config or a default)" if self.files else "--config"

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A ConfigError saying 'file:line: key.path: message'."""
        return ConfigError(f"{self.at(path)}: {'.'.join(map(str, path)) or '(top level)'}: {message}")


def check_schema(config: dict, schema: dict, source: ConfigSource) -> None:
    """Validate against the JSON schema; every error names file, line and key path (not a
    schema dump). Raises one ConfigError listing them all."""
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [str(source.error(tuple(e.absolute_path), _say(e))) for e in errors[:20]]
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ConfigError("the config does not fit workflow/schemas/config.schema.yaml:\n  " + "\n  ".join(lines) + more)


def _say(e) -> str:
    """A schema error in a line: the message, and the description of the key (its reason)."""
    why = e.schema.get("description") if isinstance(e.schema, dict) else None
    if e.validator in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "minItems") and why:
        return f"{e.message} ({why})"
    if e.validator == "oneOf":
        return f"{e.instance!r} fits none of: " + "; ".join(str(c.message) for c in e.context[:4])
    return e.message
