"""The execute stage: canonical solutions pass, wrong ones fail, rows resume, MBPP+ rules,
and parity with stock EvalPlus 0.3.1 on HumanEval+."""

import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest

from skipbench.benchmarks.tasks import load_benchmark
from skipbench.execute import EXECUTE_SCHEMA, run_execute
from shared_data import HUMANEVAL_PLUS, needs_shared_data
from test_benchmarks import mbpp_file

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (apt-get install bubblewrap)")
EXEC = {"sandbox": "bwrap", "timeout_s": 20, "memory_mb": 1024, "importable": []}


def write_samples(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_canonical_scores_100_and_wrong_scores_0(tmp_path):
    cfg = {"dataset": "humaneval", "tasks": 10}
    tasks = load_benchmark(cfg).tasks
    samples = write_samples(tmp_path / "s.jsonl", [
        r for t in tasks for r in ({"task_id": t.task_id, "completion": t.canonical_solution},
                                   {"task_id": t.task_id, "solution": f"def {t.entry_point}(*a):\n    return object\n"})
    ])  # fmt: skip
    out = tmp_path / "exec.parquet"
    run_execute(cfg, samples, EXEC, out, threads=2)
    table = pq.read_table(out)
    assert table.schema == EXECUTE_SCHEMA
    rows = table.to_pylist()
    assert len(rows) == 20 and {r["sandbox"] for r in rows} == {"bwrap"}
    canonical = [r for r in rows if r["sample_id"] == 0]
    wrong = [r for r in rows if r["sample_id"] == 1]
    assert all(r["status"] == "pass" and r["tests_passed"] == r["tests_total"] > 0 for r in canonical)
    assert all(r["status"] == "unserialisable" for r in wrong)  # a class object is not a value
    assert all(0 < r["startup_s"] < 5 for r in rows)
    assert not out.with_name(out.name + ".partial.jsonl").exists()


def test_resume_keeps_finished_rows(tmp_path):
    cfg = {"dataset": "humaneval", "tasks": 2}
    tasks = load_benchmark(cfg).tasks
    samples = write_samples(tmp_path / "s.jsonl", [{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks])
    out = tmp_path / "exec.parquet"
    run_execute(cfg, samples, EXEC, out, threads=1)
    first = pq.read_table(out).to_pylist()
    # A killed run left one finished row (marked so we can tell it was not recomputed).
    kept = dict(first[0], status="timeout", error_type="FromPartial")
    out.with_name(out.name + ".partial.jsonl").write_text(json.dumps(kept) + "\n")
    out.unlink()
    run_execute(cfg, samples, EXEC, out, threads=1)
    again = {r["task_id"]: r for r in pq.read_table(out).to_pylist()}
    assert again[kept["task_id"]]["error_type"] == "FromPartial"
    assert again[first[1]["task_id"]]["status"] == "pass"


def test_one_sample_never_takes_the_stage_down(tmp_path, monkeypatch):
    """An executor failure on one sample (here: an OverflowError raised while running it,
    as main's bookkeeping did) is that sample's row; a torn journal line (a kill or a full
    disk mid-append) is redone; the Parquet holds one row per (sample, split)."""
    import skipbench.execute.stage as execute

    cfg = {"dataset": "humaneval", "tasks": 3}
    tasks = load_benchmark(cfg).tasks
    samples = write_samples(tmp_path / "s.jsonl", [{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks])
    out = tmp_path / "exec.parquet"
    real = execute.execute_one

    def flaky(profile, uid, bench, task, code, truth, exec_cfg):
        if task.task_id == tasks[1].task_id:
            raise OverflowError("integer division result too large for a float")
        return real(profile, uid, bench, task, code, truth, exec_cfg)

    monkeypatch.setattr(execute, "execute_one", flaky)
    partial = out.with_name(out.name + ".partial.jsonl")
    partial.write_text('{"task_id": "HumanEval/0", "sample_id": 0, "spl')  # torn, no newline
    run_execute(cfg, samples, EXEC, out, threads=2)
    rows = {r["task_id"]: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 3
    assert rows[tasks[1].task_id]["status"] == "sandbox_error"
    assert rows[tasks[1].task_id]["error_type"] == "Executor(OverflowError)"
    assert rows[tasks[0].task_id]["status"] == rows[tasks[2].task_id]["status"] == "pass"
    assert "tmpfs_dev_shm=16MiB" in json.loads(rows[tasks[0].task_id]["sandbox_profile"])["enforced"]


def test_a_lone_surrogate_is_scored_a_failure_not_a_crash(tmp_path):
    """'\\ud800' and NUL are valid JSON; EvalPlus scores such solutions failures (they do not
    compile). main's execute stage crashed hashing the first and refused the file for the second."""
    from skipbench.score.evalplus_results import eval_results
    from skipbench.benchmarks.samples import read_samples

    cfg = {"dataset": "humaneval", "tasks": 1}
    task = load_benchmark(cfg).tasks[0]
    samples = write_samples(tmp_path / "s.jsonl", [{"task_id": task.task_id, "completion": task.canonical_solution},
                                                   {"task_id": task.task_id, "completion": "    return '\ud800'\n"},
                                                   {"task_id": task.task_id, "completion": "    return 1\x00\n"}])
    assert "\\ud800" in samples.read_text()
    out = tmp_path / "exec.parquet"
    run_execute(cfg, samples, EXEC, out, threads=1)
    rows = {r["sample_id"]: r for r in pq.read_table(out).to_pylist()}
    assert rows[0]["status"] == "pass"
    assert rows[1]["status"] == "load_error" and rows[1]["error_type"] == "UnicodeEncodeError"
    assert rows[2]["status"] == "load_error"  # a NUL byte: it does not compile either
    results = eval_results(load_benchmark(cfg), read_samples(samples, load_benchmark(cfg)), pq.read_table(out).to_pandas())
    assert [e["base_status"] for e in results["eval"][task.task_id]] == ["pass", "fail", "fail"]


@pytest.mark.parametrize("line, message", [
    ('{"task_id": "HumanEval/0", "solution": 42}', "s.jsonl:2: solution of HumanEval/0 must be a string, not int"),
    ('{"task_id": "HumanEval/0", "completion": ["x"]}', "s.jsonl:2: completion of HumanEval/0 must be a string"),
    ('{"task_id": 0, "solution": "x"}', "s.jsonl:2: task_id must be a string"),
    ('["HumanEval/0"]', "s.jsonl:2: a list, not a JSON object"),
    ("[" * 100000, "s.jsonl:2: not JSON (RecursionError)"),
    ('{"task_id": "HumanEval/0", "solution": "x"} }', "s.jsonl:2: not JSON (Extra data at column 45)"),
    ('{"task_id": "HumanEval/0", "solution": "x"}\udc80', "s.jsonl:2: not UTF-8"),
    ('{"task_id": "HumanEval/0", "solution": "x", "sample_id": "7"}', "s.jsonl:2: sample_id must be an integer"),
    ('{"task_id": "HumanEval/0", "solution": "x", "sample_id": 0}', "s.jsonl:2: sample 0 of HumanEval/0 already given on line 1"),
    ('{"task_id": "HumanEval/9", "solution": "x"}', "s.jsonl:2: task HumanEval/9 is not among the selected"),
    ('{"task_id": "HumanEval/0"}', "s.jsonl:2: sample of HumanEval/0 has neither"),
])  # fmt: skip
def test_samples_file_is_validated_per_line_before_any_sandbox(tmp_path, monkeypatch, line, message):
    import skipbench.execute.stage as execute
    from skipbench.benchmarks.samples import SamplesError

    monkeypatch.setattr(execute, "check_sandbox", lambda p: pytest.fail("sandbox started before validation"))
    path = tmp_path / "s.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "solution": "x"}\n' + line + "\n", errors="surrogateescape")  # \udc80: a raw 0x80 byte
    with pytest.raises(SamplesError) as e:
        run_execute({"dataset": "humaneval", "tasks": 1}, path, EXEC, tmp_path / "o.parquet", threads=1)
    assert message in str(e.value)


def test_ground_truth_retries_then_records(tmp_path, monkeypatch):
    """A canonical run that fails once is retried; one that always fails is recorded and
    its samples get groundtruth_error rows (main aborted the job: `canonical solution fail`)."""
    import skipbench.execute.groundtruth as gt
    from skipbench.execute.harness import Outcome

    cfg = {"dataset": "humaneval", "tasks": 2}
    tasks = load_benchmark(cfg).tasks
    real, calls = gt.run_tests, {}

    def flaky(profile, uid, job, budget_s, judge):
        key = (job["code"][:200], job["mode"])
        calls[key] = calls.get(key, 0) + 1
        if tasks[1].prompt[:200] == job["code"][:200] and job["mode"] == "run":
            return Outcome(status="fail", tests_total=1, error_type="Died")  # every try
        if calls[key] == 1:
            return Outcome(status="timeout", tests_total=1, error_type="Timeout")  # first try only
        return real(profile, uid, job, budget_s, judge)

    monkeypatch.setattr(gt, "run_tests", flaky)
    samples = write_samples(tmp_path / "s.jsonl", [{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks])
    out = tmp_path / "exec.parquet"
    run_execute(cfg, samples, {**EXEC, "groundtruth_dir": str(tmp_path / "gt")}, out, threads=1)
    rows = {r["task_id"]: r for r in pq.read_table(out).to_pylist()}
    assert rows[tasks[0].task_id]["status"] == "pass"
    assert rows[tasks[1].task_id]["status"] == "groundtruth_error"
    assert max(calls.values()) == gt.RETRIES
    cached = json.loads(next((tmp_path / "gt").glob("*.json")).read_text())
    assert set(cached) == {tasks[0].task_id}  # the failed one is tried again next time


def test_mbpp_plus_rules(tmp_path):
    path = mbpp_file(tmp_path)
    cfg = {"dataset": "mbpp_plus", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    samples = write_samples(tmp_path / "s.jsonl", [
        # set-equality task: any order passes (EvalPlus MBPP_OUTPUT_SET_EQ_TASKS)
        {"task_id": "Mbpp/2", "solution": "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"},
        {"task_id": "Mbpp/2", "solution": "def similar_elements(a, b):\n    return (0,)\n"},
        {"task_id": "Mbpp/7", "solution": "def find_char_long(s):\n    return [w for w in s.split() if len(w) >= 4][::-1]\n"},
    ])  # fmt: skip
    out = tmp_path / "exec.parquet"
    run_execute(cfg, samples, EXEC, out, threads=2)
    st = {(r["task_id"], r["sample_id"], r["split"]): r["status"] for r in pq.read_table(out).to_pylist()}
    assert st[("Mbpp/2", 0, "base")] == st[("Mbpp/2", 0, "plus")] == "pass"
    assert st[("Mbpp/2", 1, "base")] == "fail"
    assert st[("Mbpp/7", 0, "base")] == "pass"  # reversed order, same set


def mutate(code: str) -> str | None:
    """An honest wrong solution: the canonical one with one operator changed."""
    for a, b in ((" < ", " <= "), (" > ", " >= "), (" + 1", " + 2"), (" == ", " != "), (" - ", " + ")):
        if a in code:
            return code.replace(a, b, 1)
    return None


def stock_evalplus(problems: dict, samples: list[dict]) -> dict:
    """Verdicts of stock EvalPlus 0.3.1 (in-process ground truth, its own untrusted_check)."""
    from evalplus.evaluate import check_correctness
    from evalplus.gen.util import trusted_exec

    verdicts = {}
    for i, s in enumerate(samples):
        p = problems[s["task_id"]]
        truth = {}
        for split in ("base", "plus"):
            truth[split], truth[f"{split}_time"] = trusted_exec(
                p["prompt"] + p["canonical_solution"], p[f"{split}_input"], p["entry_point"], record_time=True)
        r = check_correctness("humaneval", i, p, s["solution"], truth, fast_check=True)
        verdicts[i] = (r["base"][0], r["plus"][0])
    return verdicts


@needs_shared_data
@pytest.mark.slow
def test_parity_with_stock_evalplus(tmp_path):
    """Canonical solutions and operator mutants of the first 12 HumanEval+ tasks get the
    same pass/not-pass verdicts as stock EvalPlus."""
    cfg = {"dataset": "humaneval_plus", "path": str(HUMANEVAL_PLUS), "tasks": 12}
    bench = load_benchmark(cfg)
    samples = []
    for t in bench.tasks:
        samples.append({"task_id": t.task_id, "solution": t.prompt + t.canonical_solution})
        wrong = mutate(t.canonical_solution)
        if wrong:
            samples.append({"task_id": t.task_id, "solution": t.prompt + wrong})
    path = write_samples(tmp_path / "s.jsonl", samples)
    out = tmp_path / "exec.parquet"
    run_execute(cfg, path, {**EXEC, "timeout_s": 60}, out, threads=2)
    ours = {}
    for r in pq.read_table(out).to_pylist():
        ours.setdefault((r["task_id"], r["sample_id"]), {})[r["split"]] = r["status"] == "pass"
    problems = {t.task_id: {"task_id": t.task_id, "prompt": t.prompt, "canonical_solution": t.canonical_solution,
                            "entry_point": t.entry_point, "base_input": t.base_input, "plus_input": t.plus_input,
                            "atol": t.atol} for t in bench.tasks}  # fmt: skip
    stock = stock_evalplus(problems, samples)
    per_task: dict[str, int] = {}
    mismatches = []
    for i, s in enumerate(samples):
        sid = per_task.get(s["task_id"], 0)
        per_task[s["task_id"]] = sid + 1
        mine = ours[(s["task_id"], sid)]
        theirs = (stock[i][0] == "pass", stock[i][1] == "pass")
        if (mine["base"], mine["plus"]) != theirs:
            mismatches.append((s["task_id"], sid, mine, stock[i]))
    assert not mismatches
    assert all(ours[(t.task_id, 0)] == {"base": True, "plus": True} for t in bench.tasks)
    assert any(not v["plus"] for v in ours.values())  # the mutants do fail somewhere


def test_score_counts_a_pass_only_when_every_test_was_judged():
    """main's score read only the status: rows like `pass, 0/7` (forged captures) counted."""
    import pandas as pd

    from skipbench.score.stage import sample_passes

    ex = pd.DataFrame([
        {"task_id": "T/0", "sample_id": 0, "split": "base", "status": "pass", "tests_passed": 7, "tests_total": 7},
        {"task_id": "T/0", "sample_id": 0, "split": "plus", "status": "pass", "tests_passed": 0, "tests_total": 999},
        {"task_id": "T/1", "sample_id": 0, "split": "base", "status": "pass", "tests_passed": 0, "tests_total": 7},
        {"task_id": "T/1", "sample_id": 0, "split": "plus", "status": "pass", "tests_passed": 9, "tests_total": 9},
    ])  # fmt: skip
    p = sample_passes(ex)
    assert p.loc[("T/0", 0), "base"] and not p.loc[("T/0", 0), "plus"]
    assert not p.loc[("T/1", 0), "base"] and not p.loc[("T/1", 0), "plus"]
