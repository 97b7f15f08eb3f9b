"""What decides a rerun travels with the results.

Snakemake decides whether a job reruns from a record per output file in
`.snakemake/metadata/` (the params, among them our `code` content hash, the set of
inputs, the software environment). A results folder copied without that folder (`cp -a
results`, an archive) loses them, and Snakemake then reruns nothing whatever changed
("missing provenance/metadata"). So each record of a file under `results/<run>/` is kept
beside the results too, as `results/<run>/.provenance/<path in the run>.json`, and a record
missing from `.snakemake/metadata/` is put back from there while the workflow is planned
(rules/common.smk), before Snakemake reads them.

The records are Snakemake's own, in the layout of its file backend (snakemake 9
persistence/file.py `FilePersistence._record_path`: urlsafe base64 of the output path,
cut into name-sized chunks, every chunk but the last prefixed with "@"). A record of an
older format makes Snakemake rerun its job ("outdated metadata"): never a silent skip.
"""

from __future__ import annotations

import json
import os
from base64 import urlsafe_b64decode, urlsafe_b64encode
from pathlib import Path

from skipbench.io import write_text

METADATA = Path(".snakemake/metadata")
SIDECARS = ".provenance"


def record_path(metadata: Path, key: str) -> Path:
    """Where Snakemake's file backend keeps the record of output `key` (a relative path)."""
    max_len = os.pathconf(metadata, "PC_NAME_MAX") if metadata.exists() else 255
    b64 = urlsafe_b64encode(key.encode()).decode()
    chunks = [b64[i:i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    return metadata.joinpath(*["@" + c for c in chunks[:-1]], chunks[-1])


def _key(metadata: Path, record: Path) -> str | None:
    """The output path a record file is for (None: not a record of this layout)."""
    b64 = "".join(p[1:] if p.startswith("@") else p for p in record.relative_to(metadata).parts)
    try:
        return urlsafe_b64decode(b64).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def save(run_dir: str, metadata: Path = METADATA) -> int:
    """Copy every record of a file under `run_dir` to its sidecar (where it differs). Returns
    how many were written."""
    prefix, written = run_dir.rstrip("/") + "/", 0
    if not metadata.is_dir():
        return 0
    for record in metadata.rglob("*"):
        key = _key(metadata, record) if record.is_file() else None
        if key is None or not key.startswith(prefix):
            continue
        sidecar = Path(prefix, SIDECARS, key[len(prefix):] + ".json")
        text = record.read_text()
        if not sidecar.is_file() or sidecar.read_text() != text:
            write_text(sidecar, text)
            written += 1
    return written


def restore(run_dir: str, metadata: Path = METADATA) -> int:
    """Put back the record of every existing output of `run_dir` that Snakemake has none
    of, from its sidecar. Records of jobs that did not finish are not restored. Returns
    how many were."""
    root, restored = Path(run_dir, SIDECARS), 0
    for sidecar in root.rglob("*.json") if root.is_dir() else []:
        key = str(Path(run_dir, sidecar.relative_to(root)))[: -len(".json")]
        target = record_path(metadata, key)
        if target.exists() or not os.path.lexists(key):
            continue
        try:
            if json.loads(sidecar.read_text()).get("incomplete", False):
                continue
        except (OSError, ValueError, AttributeError):
            continue  # a torn or foreign sidecar: Snakemake then has no record, as without it
        write_text(target, sidecar.read_text())
        restored += 1
    return restored


def sync(run_dir: str, metadata: Path = METADATA) -> None:
    """Records to sidecars (those of jobs finished since), then sidecars to missing records."""
    save(run_dir, metadata)
    restore(run_dir, metadata)
