"""LiveCodeBench's stdin and integers as its evaluator has them: programs written in the
reading styles people use, graded by LiveCodeBench's own evaluator (nvidia-livecodebench,
the oracle) and by the real sandbox, which must agree on every one."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from lcb_fixture import BIG, STYLE_PROBLEMS, STYLE_SOLUTIONS, lcb_verdicts, write_release
from skipbench.benchmarks import livecodebench as lcb

pytest.importorskip("livecodebench", reason="nvidia-livecodebench (LiveCodeBench's evaluator): `make setup`")

PROBLEM = {p["question_id"]: p for p in STYLE_PROBLEMS}
IDS = [f"{q}-{i}" for i, (q, _, _) in enumerate(STYLE_SOLUTIONS)]


@pytest.fixture(scope="module")
def oracle() -> list[bool]:
    return lcb_verdicts([(PROBLEM[q], code) for q, code, _ in STYLE_SOLUTIONS])


def test_fixture_verdicts_are_livecodebench_s(oracle):
    wrong = [(i, code) for i, ((_, code, verdict), got) in enumerate(zip(STYLE_SOLUTIONS, oracle)) if got is not verdict]
    assert not wrong, "\n".join(map(repr, wrong))


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (apt-get install bubblewrap)")
def test_sandboxed_verdicts_equal_livecodebench_s(oracle, tmp_path):
    from skipbench.execute import EXECUTE_SCHEMA, run_execute

    release = write_release(tmp_path / "lcb", problems=STYLE_PROBLEMS)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": q, "solution": code, "sample_id": i}) + "\n"
                               for i, (q, code, _) in enumerate(STYLE_SOLUTIONS)))  # fmt: skip
    out = tmp_path / "exec.parquet"
    run_execute({"dataset": "livecodebench", "path": str(release)}, samples, {"sandbox": "bwrap"}, out, threads=2)
    rows = {r["sample_id"]: r for r in pq.read_table(out, schema=EXECUTE_SCHEMA).to_pylist()}
    differ = [(IDS[i], STYLE_SOLUTIONS[i][1], rows[i]["status"], rows[i]["error_type"])
              for i in range(len(STYLE_SOLUTIONS)) if (rows[i]["status"] == "pass") is not oracle[i]]  # fmt: skip
    assert not differ, "\n".join(map(repr, differ))


def test_trusted_side_reads_integers_under_livecodebench_s_digit_limit():
    """LiveCodeBench parses call-based tests with its 50000-digit limit, this process has 4300."""
    assert lcb.call_arguments(f"{BIG}\n-{BIG}") == [10**6000 - 1, -(10**6000 - 1)]
    assert lcb.call_match(10**6000, "1" + "0" * 6000) and not lcb.call_match(10**6000 + 1, "1" + "0" * 6000)
    with pytest.raises(ValueError, match="digits"):
        lcb.call_arguments("9" * 50001)
    assert not lcb.call_match(0, "9" * 50001)
