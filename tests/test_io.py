import os

import pyarrow as pa
import pytest

from skipbench.io import atomic_dir, atomic_path, read_table, stable_hash, write_table

SCHEMA = pa.schema([("name", pa.string()), ("value", pa.float64())])


def test_write_table_checks_and_orders_columns(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(path, [{"value": 1.5, "name": "a"}], SCHEMA)
    table = read_table(path, SCHEMA)
    assert table.schema == SCHEMA
    assert table.to_pylist() == [{"name": "a", "value": 1.5}]


def test_write_table_rejects_missing_or_extra_columns(tmp_path):
    table = pa.table({"name": ["a"], "other": [1]})
    with pytest.raises(ValueError, match="missing \\['value'\\].*unexpected \\['other'\\]"):
        write_table(tmp_path / "t.parquet", table, SCHEMA)
    assert not (tmp_path / "t.parquet").exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(os.listdir(target)) == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_honour_the_umask(tmp_path, umask_022):
    """Result files get the mode open() would give (0644/0755), not mkstemp's 0600."""
    write_table(tmp_path / "t.parquet", [{"name": "a", "value": 1.0}], SCHEMA)
    with atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "a").write_text("1")
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    os.umask(0o077)
    with atomic_path(tmp_path / "private.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


def test_current_umask_reads_without_changing(umask_022):
    from skipbench.io import current_umask

    assert current_umask() == 0o022
    assert current_umask() == 0o022


def test_jsonl_objects_names_file_and_line_of_every_bad_line(tmp_path):
    from skipbench.io import JsonlError, jsonl_objects

    f = tmp_path / "s.jsonl"
    f.write_text('{"a": "x\u2028y"}\n\n{"a": 1} }\n[1]\n' + "[" * 100000 + "\n{\"b\": 2}\r\n", encoding="utf-8")
    rows = jsonl_objects(f)
    assert [w for w, _ in rows] == [f"{f}:1", f"{f}:3", f"{f}:4", f"{f}:5", f"{f}:6"]
    assert rows[0][1] == {"a": "x\u2028y"} and rows[4][1] == {"b": 2}  # U+2028 is no line break in JSONL
    assert str(rows[1][1]) == f"{f}:3: not JSON (Extra data at column 10)"
    assert str(rows[2][1]) == f"{f}:4: a list, not a JSON object"
    assert str(rows[3][1]) == f"{f}:5: not JSON (RecursionError)"
    f.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(JsonlError, match=r"s.jsonl:2: not UTF-8"):
        jsonl_objects(f)
    with pytest.raises(JsonlError, match="cannot read it"):
        jsonl_objects(tmp_path / "missing.jsonl")
