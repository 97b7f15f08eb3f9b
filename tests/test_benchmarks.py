"""Dataset loading: pinned hashes, task selection, offline errors, MBPP+ deserialisation."""

import gzip
import json
from pathlib import Path

import pytest

from skipbench.benchmarks.tasks import DatasetUnavailable, _assert_tolerance, load_benchmark, load_tasks
from shared_data import HUMANEVAL_PLUS, needs_shared_data



def test_humaneval_offline_and_pinned():
    bench = load_benchmark({"dataset": "humaneval"})
    assert len(bench.tasks) == 164 and bench.splits == ("base",)
    assert bench.version == "1.0.3" and bench.sha256.startswith("1d49078b")
    assert [t.task_id for t in load_tasks({"dataset": "humaneval", "tasks": 3})] == [
        "HumanEval/0", "HumanEval/1", "HumanEval/2"]  # fmt: skip
    picked = load_tasks({"dataset": "humaneval", "tasks": ["HumanEval/32"]})
    assert picked[0].entry_point == "find_zero" and picked[0].atol == 1e-4  # from its assert
    with pytest.raises(ValueError, match="unknown task ids"):
        load_tasks({"dataset": "humaneval", "tasks": ["HumanEval/999"]})


def test_assert_tolerance():
    assert _assert_tolerance("def check(c):\n    assert abs(c(1.0) - 0.5) < 1e-6\n") == 1e-6
    assert _assert_tolerance("def check(c):\n    assert math.fabs(p(c(x))) < 1e-4\n") == 1e-4
    assert _assert_tolerance("def check(c):\n    assert c(1) == 2\n") == 0.0


@needs_shared_data
def test_humaneval_plus_from_path_and_env(monkeypatch):
    bench = load_benchmark({"dataset": "humaneval_plus", "path": str(HUMANEVAL_PLUS), "tasks": 2})
    assert bench.version == "v0.1.10" and bench.splits == ("base", "plus")
    assert len(bench.tasks[0].plus_input) > 100
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(HUMANEVAL_PLUS))
    assert load_benchmark({"dataset": "humaneval_plus", "tasks": 1}).sha256 == bench.sha256


@needs_shared_data
def test_wrong_hash_is_an_error(tmp_path):
    rows = gzip.decompress(HUMANEVAL_PLUS.read_bytes()).decode().splitlines()
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(rows[:-1]) + "\n")  # one task missing
    with pytest.raises(ValueError, match="sha256"):
        load_benchmark({"dataset": "humaneval_plus", "path": str(edited)})


def test_no_file_no_network_says_how_to_supply(monkeypatch, tmp_path):
    import evalplus.data.utils as eu

    monkeypatch.delenv("MBPP_OVERRIDE_PATH", raising=False)
    monkeypatch.setattr(eu, "CACHE_DIR", str(tmp_path))

    def offline(url, path):
        raise OSError("network unreachable")

    monkeypatch.setattr(eu, "make_cache", offline)
    with pytest.raises(DatasetUnavailable, match="MBPP_OVERRIDE_PATH"):
        load_benchmark({"dataset": "mbpp_plus"})


def mbpp_file(tmp_path) -> Path:
    """Two synthetic MBPP+ tasks in EvalPlus format (Mbpp/2 takes tuples)."""
    tasks = [
        {"task_id": "Mbpp/2", "entry_point": "similar_elements", "atol": 0, "contract": "",
         "prompt": '"""Shared elements of two tuples."""\n',
         "canonical_solution": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
         "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]]], "plus_input": [[[1, 2], [2, 3]], [[], [1]]]},
        {"task_id": "Mbpp/7", "entry_point": "find_char_long", "atol": 0, "contract": "",
         "prompt": '"""Words of at least 4 characters."""\n',
         "canonical_solution": "import re\ndef find_char_long(s):\n    return re.findall(r'\\b\\w{4,}\\b', s)\n",
         "base_input": [["Please move back to stream"]], "plus_input": [["a bb cccc dddd"]]},
    ]  # fmt: skip
    path = tmp_path / "MbppPlus.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def test_mbpp_plus_synthetic_needs_explicit_hash(tmp_path):
    import hashlib

    path = mbpp_file(tmp_path)
    with pytest.raises(ValueError, match="pinned"):
        load_benchmark({"dataset": "mbpp_plus", "path": str(path)})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    bench = load_benchmark({"dataset": "mbpp_plus", "path": str(path), "sha256": digest})
    assert bench.family == "mbpp" and bench.version == "v0.2.0"
    assert bench.tasks[0].base_input == [[(3, 4, 5, 6), (5, 7, 4, 10)]]  # EvalPlus deserialisation
