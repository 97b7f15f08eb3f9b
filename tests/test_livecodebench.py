"""LiveCodeBench: released format, selection, prompts, extraction, and LiveCodeBench's own
evaluator (nvidia-livecodebench) as the oracle of the comparison rules."""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lcb_fixture import PROBLEMS, SOLUTIONS, encode_private, lcb_verdicts, write_release
from skipbench.benchmarks import livecodebench as lcb
from skipbench.benchmarks.tasks import load_benchmark
from skipbench.benchmarks.prompts import Prompter, program_of, render_tasks
from skipbench.execute.lcb_job import sandbox_program


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("lcb"))


def test_loads_released_format_with_encoded_private_tests(release):
    bench = load_benchmark({"dataset": "livecodebench", "path": str(release)})
    assert [t.task_id for t in bench.tasks] == [p["question_id"] for p in PROBLEMS]
    assert bench.family == "livecodebench" and bench.splits == ("base",)
    two_sum = bench.tasks[2].lcb
    assert two_sum.fn_name == "twoSum" and two_sum.difficulty == "easy" and two_sum.platform == "leetcode"
    assert len(two_sum.tests) == 3 and json.loads(two_sum.tests[1][1]) == [1, 2]  # public, then private
    assert bench.tasks[0].lcb.tests[-1] == ("0 0\n", "0")


def test_window_and_difficulty_select_problems(release):
    def ids(**cfg):
        return [t.task_id for t in load_benchmark({"dataset": "livecodebench", "path": str(release), **cfg}).tasks]

    assert ids(released_after="2024-09-01") == ["abc001_a", "abc002_b", "3001"]  # inclusive
    assert ids(released_after="2024-09-02", released_before="2024-10-31") == ["3001"]
    assert ids(difficulty=["easy"]) == ["abc001_a", "3001"]
    assert ids(released_after="2024-01-01", tasks=["3001", "abc001_a"]) == ["3001", "abc001_a"]
    with pytest.raises(ValueError, match="released_after"):
        ids(released_after="last week")


def test_folder_path_reads_the_release_files(tmp_path):
    write_release(tmp_path, "test.jsonl")
    write_release(tmp_path / "other", "x.jsonl")
    bench = load_benchmark({"dataset": "livecodebench", "path": str(tmp_path), "release": "release_v2"})
    assert len(bench.tasks) == len(PROBLEMS)
    assert lcb.hub_files("release_v3") == ["test.jsonl", "test2.jsonl", "test3.jsonl"]


def test_hub_download_fetches_the_release_files_at_a_revision(tmp_path, monkeypatch):
    import huggingface_hub

    src = write_release(tmp_path / "hub")
    asked = []

    def fake_download(repo_id, filename, repo_type=None, revision=None):
        asked.append((repo_id, filename, repo_type, revision))
        return str(src)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    bench = load_benchmark({"dataset": "livecodebench", "release": "release_v1", "revision": "abc123"})
    assert asked == [("livecodebench/code_generation_lite", "test.jsonl", "dataset", "abc123")]
    assert bench.version == "release_v1@abc123" and len(bench.tasks) == len(PROBLEMS)

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="set `path:`"):
        load_benchmark({"dataset": "livecodebench", "release": "release_v1"})


def test_pinned_hash_is_checked(release):
    with pytest.raises(ValueError, match="pinned"):
        load_benchmark({"dataset": "livecodebench", "path": str(release), "sha256": "0" * 64})


@pytest.mark.parametrize("private", [
    base64.b64encode(zlib.compress(pickle.dumps(print))).decode(),  # a global: refused, never called
    base64.b64encode(zlib.compress(pickle.dumps({"a": 1}))).decode(),  # not a JSON string
    "%%% not base64",
    base64.b64encode(b"not zlib").decode(),
    json.dumps([{"input": 1, "output": "x"}]),
])
def test_malformed_rows_are_refused_with_their_line(tmp_path, private):
    row = {k: v for k, v in PROBLEMS[0].items() if k not in ("public", "private")}
    row |= {"public_test_cases": json.dumps(PROBLEMS[0]["public"]), "private_test_cases": private}
    path = tmp_path / "test.jsonl"
    path.write_text("\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"test.jsonl:2: not a LiveCodeBench problem"):
        load_benchmark({"dataset": "livecodebench", "path": str(path)})


def test_duplicate_ids_and_broken_json_are_refused(tmp_path):
    path = write_release(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        load_benchmark({"dataset": "livecodebench", "path": str(path)})
    path.write_text("[" * 100000 + "\n")
    with pytest.raises(ValueError, match="test.jsonl:1"):
        load_benchmark({"dataset": "livecodebench", "path": str(path)})


def test_private_tests_decompress_within_a_cap(monkeypatch):
    monkeypatch.setattr(lcb, "MAX_PRIVATE_BYTES", 1000)
    with pytest.raises(ValueError, match="exceed"):
        lcb.decode_private(encode_private([{"input": "x" * 5000, "output": "y", "testtype": "stdin"}]))


def test_prompts_follow_livecodebench(release):
    tasks = load_benchmark({"dataset": "livecodebench", "path": str(release)}).tasks
    seen = []
    chat = Prompter("chat", chat_template=lambda messages: seen.append(messages) or "<chat>")
    assert render_tasks(tasks[:1], chat)[0].prompt == "<chat>"
    system, user = seen[0]
    assert system["role"] == "system" and system["content"].startswith("You are an expert Python programmer.")
    assert user["content"].startswith("### Question:\nRead two integers")
    assert "### Format: Read the inputs from stdin" in user["content"]
    assert user["content"].endswith("### Answer: (use the provided format with backticks)\n\n")
    leet = render_tasks(tasks[2:3], Prompter("completion"))[0]
    assert "```python\nclass Solution:" in leet.prompt and leet.prompt.endswith("```python\n")
    assert leet.protocol == "completion"
    assert Prompter("chat").stop(tasks[0], None) == ["###"]


@pytest.mark.parametrize("reply, code", [
    ("Here:\n```python\nprint(1)\n```\nDone.", "print(1)"),
    ("```python\nx = 1\n```\ntext\n```python\nprint(2)\n```", "print(2)"),  # the last block, as LCB
    ("no code at all", ""),
    ("```python\nunterminated", ""),
])
def test_chat_extraction_is_livecodebench_s(release, reply, code):
    task = render_tasks(load_benchmark({"dataset": "livecodebench", "path": str(release)}).tasks[:1],
                        Prompter("chat", chat_template=lambda m: ""))[0]
    assert program_of(task, reply) == code


def test_comparison_rules_never_raise_on_untrusted_outputs():
    assert lcb.stdio_match("3 \n\n", "3\n") and lcb.stdio_match("1.50\n", "1.5")
    assert not lcb.stdio_match("sNaN", "sNaN\n0") and not lcb.stdio_match("sNaN 1", "1 sNaN")
    assert not lcb.stdio_match(3, "3") and not lcb.stdio_match(None, "")
    assert lcb.call_match((0, 1), "[0, 1]") and not lcb.call_match([(0, 1)], "[[0, 1]]")
    deep = []
    for _ in range(100000):
        deep = [deep]
    assert not lcb.call_match(deep, "[0]")


# --- LiveCodeBench's evaluator as the oracle ------------------------------------------------

def _oracle(qid: str, code: str) -> bool:
    pytest.importorskip("livecodebench", reason="nvidia-livecodebench (LiveCodeBench's evaluator): `make setup`")
    return lcb_verdicts([(next(p for p in PROBLEMS if p["question_id"] == qid), code)])[0]


def _ours_unsandboxed(problem: lcb.LcbProblem, code: str) -> bool:
    """The program skipbench sends to the sandbox, run here in a plain process, judged by our rules."""
    program, entry, args = sandbox_program(code, problem)
    driver = program + textwrap.dedent(f"""
        import json as _j, sys as _s
        _out = []
        for _args in _j.loads(_s.argv[1]):
            try:
                _out.append([True, {entry}(*_args)])
            except BaseException as _e:
                _out.append([False, repr(_e)])
                break
        _s.__stdout__.write("OUT " + _j.dumps(_out) + "\\n")
    """)
    try:
        out = subprocess.run([sys.executable, "-c", driver, json.dumps(args)], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=2 * len(args) + 5)
    except subprocess.TimeoutExpired:
        return False
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("OUT ")]
    if not lines:
        return False
    results = json.loads(lines[-1][4:])
    match = lcb.call_match if problem.fn_name else lcb.stdio_match
    return len(results) == len(problem.tests) and all(
        ok and match(value, expected) for (ok, value), (_, expected) in zip(results, problem.tests))


@pytest.fixture(scope="module")
def problems(release) -> dict:
    return {t.task_id: t.lcb for t in load_benchmark({"dataset": "livecodebench", "path": str(release)}).tasks}


@pytest.mark.parametrize("qid, code, verdict", SOLUTIONS, ids=[f"{q}-{i}" for i, (q, _, _) in enumerate(SOLUTIONS)])
def test_fixture_verdicts_agree_with_livecodebench(problems, qid, code, verdict):
    assert _oracle(qid, code) is verdict  # the fixture's verdicts are LiveCodeBench's
    assert _ours_unsandboxed(problems[qid], code) is verdict


# --- in the sandbox ---------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (apt-get install bubblewrap)")
def test_sandboxed_verdicts_equal_livecodebench_s(release, tmp_path):
    """The execute stage reaches the fixture's (LiveCodeBench's) verdict on every solution."""
    from skipbench.execute import EXECUTE_SCHEMA, run_execute

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": q, "solution": code}) + "\n" for q, code, _ in SOLUTIONS))
    out = tmp_path / "exec.parquet"
    run_execute({"dataset": "livecodebench", "path": str(release)}, samples, {"sandbox": "bwrap"}, out, threads=2)
    rows = pq.read_table(out, schema=EXECUTE_SCHEMA).to_pylist()
    assert [r["split"] for r in rows] == ["base"] * len(SOLUTIONS)
    by_sample = {}
    for r in rows:
        by_sample.setdefault(r["task_id"], {})[r["sample_id"]] = r
    order = {}
    for q, code, verdict in SOLUTIONS:
        i = order[q] = order.get(q, -1) + 1
        row = by_sample[q][i]
        assert (row["status"] == "pass") is verdict, (q, code, row["status"], row["error_type"])
        assert row["tests_total"] == len(next(p for p in PROBLEMS if p["question_id"] == q)["public"]) + len(
            next(p for p in PROBLEMS if p["question_id"] == q)["private"])
    slow = by_sample["3001"][max(by_sample["3001"])]
    assert slow["status"] == "timeout" and slow["time_limit_s"] == (lcb.TIMEOUT_S + 1) * 3 + 5


def test_calibration_is_held_out_from_a_livecodebench_benchmark(release):
    """A LiveCodeBench benchmark is its own dataset family: calibration on HumanEval still plans."""
    from skipbench.infer.calibrate import calibration_tasks

    tasks = calibration_tasks({"dataset": "humaneval", "tasks": 3},
                              {"he": {"dataset": "humaneval", "tasks": 2},
                               "lcb": {"dataset": "livecodebench", "path": str(release)}})  # fmt: skip
    assert [t.task_id for t in tasks] == ["HumanEval/2", "HumanEval/3", "HumanEval/4"]
