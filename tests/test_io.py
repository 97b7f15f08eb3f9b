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
