"""The Hugging Face sharded-safetensors layout that DeepSeek-V3's release uses.

A checkpoint directory holds `model-0000N-of-0000M.safetensors` shards, an index
`model.safetensors.index.json` ({"metadata": {"total_size": bytes}, "weight_map":
{tensor: shard}}), `config.json`, and tokenizer/generation files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa

from skipbench.io import sha256_file, write_json

INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"

# Bytes per element of the safetensors dtype strings (header "dtype" field).
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}

# One row per file of a checkpoint directory.
MANIFEST_SCHEMA = pa.schema([
    ("file", pa.string()),    # path relative to the checkpoint directory, "/"-separated
    ("bytes", pa.int64()),    # file size on disk
    ("sha256", pa.string()),  # hex digest of the file contents
])


def shard_name(i: int, n: int) -> str:
    """Name of shard i (1-based) of n, as in the release: model-00001-of-00163.safetensors."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def read_index(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no safetensors index; not a sharded checkpoint")
    return json.loads(path.read_text())


def write_index(ckpt_dir: Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": int(total_size)}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(Path(ckpt_dir) / INDEX_NAME, index)


def copy_side_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy tokenizer, generation config, code and docs: every top-level file except the
    weights, the index and config.json (those are rewritten by the caller)."""
    copied = []
    for path in sorted(Path(src_dir).iterdir()):
        skip = path.name in (INDEX_NAME, CONFIG_NAME) or path.suffix == ".safetensors"
        if path.is_file() and not path.name.startswith(".") and not skip:
            shutil.copy2(path, Path(dst_dir) / path.name)
            copied.append(path.name)
    return copied


def manifest_rows(ckpt_dir: Path) -> list[dict]:
    """(file, bytes, sha256) of every file below `ckpt_dir`, hidden paths excluded."""
    root = Path(ckpt_dir)
    rows = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            rows.append({"file": rel.as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return rows
