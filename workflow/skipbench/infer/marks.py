"""Generation marks: the file the shared-engine job `generate` writes per variant once the
variant's cache is complete (rules/infer.smk).

A mark is named <variant>.<hash of the variant's config>.json, so an added or edited
variant has no mark yet and only its infer job is planned; the name's format lives here
only, for the rules that name marks and the job that writes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from skipbench.io import stable_hash, write_json

_MARK = re.compile(r"^(?P<variant>.+)\.[0-9a-f]{16}\.json$")  # stable_hash: 16 hex digits


def mark_name(variant: str, variant_cfg: dict) -> str:
    return f"{variant}.{stable_hash(variant_cfg)}.json"


def write_marks(report: pa.Table, marks: list[Path]) -> None:
    """One mark per variant of the config: its GENERATE_SCHEMA row (skipbench.infer.stage), or
    on_benchmark false for a variant the benchmark leaves out. Marks of earlier configs
    in the same folders are removed."""
    rows = {row["variant"]: row for row in report.to_pylist()}
    marks = [Path(m) for m in marks]
    for mark in marks:
        variant = _MARK.match(mark.name)["variant"]
        write_json(mark, {"variant": variant, "on_benchmark": variant in rows, **rows.get(variant, {})})
    for folder in {m.parent for m in marks}:
        for stale in set(folder.glob("*.json")) - set(marks):
            stale.unlink()
