"""Atomic file writes and schema-checked Parquet.

Every output is written to a temporary sibling and renamed into place, so a killed
run never leaves a half-written file that looks complete (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (Linux >= 4.7)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no read-only API elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _honour_umask(path: Path, base: int) -> None:
    # mkstemp/mkdtemp create 0600/0700 entries; a result file must get the mode a plain
    # open() would give (0644 under umask 022) so teammates on a shared filesystem read it.
    os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():  # the writer may have replaced the temp file: chmod what exists
            _honour_umask(tmp, 0o666)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _staging_owner(staging: Path) -> tuple[int, int] | None:
    """(pid, start) of the job that made a staging folder `.<name>.<pid>-<start>.<random>.tmp`."""
    try:
        pid, start = staging.name.split(".")[-3].split("-")
        return int(pid), int(start)
    except (IndexError, ValueError):
        return None  # an older name without its owner


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; it replaces `path` on success, every entry
    with the mode the umask gives. Staging folders of a killed earlier job (same name
    pattern) are removed first; one whose owner (named in its name) still runs is kept: an
    earlier job that outlived its Snakemake, writing there."""
    from skipbench.jobs import alive, process_start

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        owner = _staging_owner(stale)
        if owner and alive(*owner):
            log.warning("keeping %s: its job (pid %d) still runs", stale, owner[0])
            continue
        log.warning("removing %s, left by a killed job", stale)
        shutil.rmtree(stale, ignore_errors=True)
    me = f"{os.getpid()}-{process_start(os.getpid())}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{me}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        # mkdtemp makes 0700, safetensors writes shards 0600: give what open()/mkdir() would
        for entry in tmp.rglob("*"):
            if not entry.is_symlink():
                _honour_umask(entry, 0o777 if entry.is_dir() or entry.stat().st_mode & 0o100 else 0o666)
        _honour_umask(tmp, 0o777)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class JsonlError(ValueError):
    """A JSONL file or line that cannot be read; the message starts with file:line."""


def jsonl_objects(path: str | os.PathLike) -> list[tuple[str, dict | JsonlError]]:
    """(where, object) for every non-blank line of an untrusted JSONL file, where = "file:line";
    a line that is not one JSON object gives a JsonlError in its place, so a caller can report
    every bad line or stop at the first. Lines end at "\n" only (a JSON string may hold a raw
    U+2028). Raises JsonlError for a file that cannot be read or is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise JsonlError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise JsonlError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start} of the file)") from None
    out: list[tuple[str, dict | JsonlError]] = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:  # its own line is always 1: give the column only
            out.append((where, JsonlError(f"{where}: not JSON ({e.msg} at column {e.colno})")))
            continue
        except Exception as e:  # noqa: BLE001 - recursion, huge numbers, anything: the line is at fault
            out.append((where, JsonlError(f"{where}: not JSON ({type(e).__name__})")))
            continue
        out.append((where, value if type(value) is dict else JsonlError(f"{where}: a {type(value).__name__}, not a JSON object")))
    return out


def check_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` cast to `schema`; raise if columns are missing or extra."""
    have, want = set(table.column_names), set(schema.names)
    if have != want:
        raise ValueError(
            f"table columns do not match schema: missing {sorted(want - have)}, "
            f"unexpected {sorted(have - want)}"
        )
    return table.select(schema.names).cast(schema)


def write_table(path: str | os.PathLike, table: pa.Table | list[dict], schema: pa.Schema) -> pa.Table:
    """Write rows (a Table or a list of dicts) as Parquet after checking `schema`."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pylist(list(table), schema=schema)
    table = check_schema(table, schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table


def read_table(path: str | os.PathLike, schema: pa.Schema | None = None) -> pa.Table:
    table = pq.read_table(path)
    return check_schema(table, schema) if schema is not None else table


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """Short hash of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def content_hash(paths: Iterable[str | os.PathLike]) -> str:
    """Short hash of the bytes of `paths` (each named by its file name), not of their mtimes."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def sampled_digest(path: str | os.PathLike, samples: int = 16, chunk: int = 1 << 16) -> str:
    """Digest of `samples` evenly spaced chunks of a file: tells retrained weights apart without
    reading hundreds of GB (any training step changes every chunk); files up to
    samples * chunk bytes are read whole."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= samples * chunk:
            h.update(f.read())
        else:
            for i in range(samples):
                f.seek((size - chunk) * i // (samples - 1))
                h.update(f.read(chunk))
    return h.hexdigest()[:16]
