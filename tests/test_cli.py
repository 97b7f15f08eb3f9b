"""The `skipbench` command: evaluate an EvalPlus samples file, variants from the command
line, the EvalPlus-native results it writes, and config values typed by the schema."""

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from skipbench.benchmarks.tasks import Benchmark, Task
from skipbench.cli import main, parse_variant
from skipbench.config_types import typed
from skipbench.score.evalplus_results import eval_results, eval_results_path
from shared_data import HUMANEVAL_PLUS, needs_shared_data

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_cli_config_strings_are_typed_by_the_schema():
    cli = {"variants": {"top3": {"strategy": "topk", "k": "3"}, "t": {"strategy": "threshold", "beta": "calibrated"},
                        "l": {"strategy": "layers", "layers": ["1", "2"], "renormalise": "true"}},
           "run": "123", "throughput": {"concurrency": ["1", "4"]}}  # fmt: skip
    out = typed(cli, SCHEMA)
    assert out["variants"] == {"top3": {"strategy": "topk", "k": 3}, "t": {"strategy": "threshold", "beta": "calibrated"},
                               "l": {"strategy": "layers", "layers": [1, 2], "renormalise": True}}  # fmt: skip
    assert out["run"] == "123"  # the schema wants a string: it stays one
    assert out["throughput"]["concurrency"] == [1, 4]
    assert typed({"variants": {"x": {"strategy": "topk", "k": "three"}}}, SCHEMA)["variants"]["x"]["k"] == "three"


def test_parse_variant():
    assert parse_variant("top3=topk:k=3") == ("top3", {"strategy": "topk", "k": 3})
    assert parse_variant("t=threshold:beta=0.2,renormalise=true") == (
        "t", {"strategy": "threshold", "beta": 0.2, "renormalise": True})  # fmt: skip
    assert parse_variant("d=dense") == ("d", {"strategy": "dense"})
    for bad in ("top3", "=topk", "x=topk:k"):
        with pytest.raises(ValueError, match="--variant"):
            parse_variant(bad)


def _bench(splits=("base", "plus")):
    task = Task("T/0", "def f(x):\n", "f", "    return x\n", base_input=[[1], [2]], plus_input=[[3]])
    return Benchmark("humaneval_plus", "v0", "sha", "humaneval", splits, [task], md5="abc")


def test_eval_results_maps_statuses_and_failing_inputs():
    samples = [{"task_id": "T/0", "completion": "    return 1\n", "sample_id": 1},
               {"task_id": "T/0", "solution": "def f(x):\n    return x\n", "sample_id": 0}]  # fmt: skip
    rows = pd.DataFrame([
        dict(task_id="T/0", sample_id=0, split="base", status="pass", first_fail_index=None),
        dict(task_id="T/0", sample_id=0, split="plus", status="timeout", first_fail_index=None),
        dict(task_id="T/0", sample_id=1, split="base", status="fail", first_fail_index=1),
        dict(task_id="T/0", sample_id=1, split="plus", status="load_error", first_fail_index=None),
    ])  # fmt: skip
    res = eval_results(_bench(), samples, rows)
    assert res["hash"] == "abc" and set(res) == {"date", "hash", "eval"}
    first, second = res["eval"]["T/0"]  # completion order
    assert first == {"task_id": "T/0", "solution": "def f(x):\n    return x\n", "base_status": "pass",
                     "plus_status": "timeout", "base_fail_tests": [], "plus_fail_tests": []}  # fmt: skip
    assert second["solution"] == "def f(x):\n    return 1\n"
    assert (second["base_status"], second["base_fail_tests"]) == ("fail", [[2]])
    assert (second["plus_status"], second["plus_fail_tests"]) == ("fail", [])
    base_only = eval_results(_bench(("base",)), samples[1:], rows[rows.split == "base"])
    assert base_only["eval"]["T/0"][0]["plus_status"] is None
    assert eval_results_path("a/s.jsonl") == "a/s_eval_results.json"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
@needs_shared_data
def test_evaluate_prints_pass_at_1_and_evalplus_reads_its_results(tmp_path, capsys, monkeypatch):
    """Five HumanEval+ tasks, one wrong: pass@1 0.8 printed; EvalPlus's own evaluate()
    loads the eval_results.json written beside the samples and reports the same."""
    rows = [json.loads(line) for line in gzip.open(HUMANEVAL_PLUS, "rt")][:5]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(
        json.dumps({"task_id": r["task_id"], "completion": "    return None\n" if i == 2 else r["canonical_solution"]}) + "\n"
        for i, r in enumerate(rows)))  # fmt: skip
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(HUMANEVAL_PLUS))  # the way the benchmarks module takes it
    rc = main(["evaluate", str(samples), "--dataset", "humaneval_plus", "--cache", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "5 of 164 tasks, 5 samples" in out
    assert "pass@1 (base tests):\t0.800" in out and "pass@1 (base + plus tests):\t0.800" in out

    from evalplus.evaluate import evaluate  # reads X_eval_results.json when it exists

    evaluate(dataset="humaneval", samples=str(samples))
    evalplus_out = capsys.readouterr().out
    assert "Load from previous results" in evalplus_out
    assert evalplus_out.count("pass@1:\t0.800") == 2  # base, and base + plus
    results = json.loads((tmp_path / "samples_eval_results.json").read_text())
    assert results["hash"] == "fe585eb4df8c88d844eeb463ea4d0302"  # EvalPlus 0.3.1's HumanEval+ v0.1.10 hash
    assert results["eval"]["HumanEval/2"][0]["base_status"] == "fail"


@pytest.mark.parametrize("text, message", [
    ("", "no samples in it"),  # main: wrote outputs, then KeyError 'base'
    ("\n  \n", "no samples in it"),
    ('{"task_id": "HumanEval/0", "completion": "x"}\n\n{"task_id": "HumanEval/0", "completion": "x"} }\n',
     "samples.jsonl:3: not JSON (Extra data at column 47)"),  # main: "line 1 column 47", no file
    ('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/999", "completion": "x"}\n',
     "samples.jsonl:2: task HumanEval/999 is not among the selected humaneval_plus tasks"),
])  # fmt: skip
@needs_shared_data
def test_evaluate_refuses_empty_and_malformed_files_naming_file_and_line(tmp_path, capsys, monkeypatch, text, message):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(text)
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(HUMANEVAL_PLUS))
    rc = main(["evaluate", str(samples), "--dataset", "humaneval_plus", "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(samples) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.jsonl"]  # nothing written


def test_bad_interpreter_is_named_without_suggesting_no_sandbox(tmp_path):
    from skipbench.execute.sandbox import SandboxUnavailable, check_sandbox, make_profile

    profile = make_profile({"sandbox": "none", "python": str(tmp_path / "no-python")})
    with pytest.raises(SandboxUnavailable, match="execution.python: .*no-python") as e:
        check_sandbox(profile)
    assert "sandbox: none" not in str(e.value)


def _dry_run(*config):
    import subprocess
    import sys

    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "-n", "--quiet", "rules",
           "--cores", "1", "--config", *config]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_snakemake_config_from_the_command_line():
    """`--config 'variants={top3: {strategy: topk, k: 3}}'` adds a variant (k typed by the
    schema); a typo in throughput.variants names the field."""
    ok = _dry_run("variants={top3: {strategy: topk, k: 3}}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "'3' is not of type" not in ok.stderr
    bad = _dry_run("throughput={variants: [dnese]}")
    assert bad.returncode != 0 and "throughput.variants: names unknown variants ['dnese']" in bad.stderr + bad.stdout


def test_show_prints_the_summary_table(tmp_path, capsys):
    from report_fixtures import write_run
    from skipbench.report import draw_report
    from skipbench.report.summary import load_run

    run_dir = tmp_path / "results" / "r1"
    files = write_run(run_dir, optional=False)
    out = run_dir / "figures"
    draw_report([load_run("r1", files["scores"])], ["he"], out, out / "summary.parquet", out / "summary.md", 1, [])
    assert main(["show", "r1", "--directory", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100 and "Quality (run: r1; benchmark: he" in text
    assert any(line.startswith("dense ") for line in text.splitlines())
    assert main(["show", "r1", "--wide", "--directory", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| dense" in text and "pass@1 base [95% CI]" in text and "run: r1; benchmark: he" in text
    assert main(["show", "missing", "--directory", str(tmp_path)]) == 1


def test_evaluate_takes_a_uid_range():
    from skipbench.cli import parser

    assert parser().parse_args(["evaluate", "s.jsonl", "--dataset", "humaneval", "--uid-base", "70000"]).uid_base == 70000


def test_run_names_its_checkout_and_says_the_next_snakemake_drops_its_variants(tmp_path, capsys):
    rc = main(["run", "--variant", "top3=topk:k=3", "--directory", str(ROOT), "--", "-n", "--version"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"+ cd {ROOT.resolve()} && " in err
    assert "The next plain `snakemake` reruns scores and figures WITHOUT them" in err
    assert "  top3: {strategy: topk, k: 3}" in err  # what to paste under variants:
    assert main(["run", "--directory", str(tmp_path)]) == 2  # not a checkout: said, nothing run
    assert f"{tmp_path} is no skipbench checkout" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
@needs_shared_data
def test_evaluate_resumes_instead_of_executing_again(tmp_path, capsys, monkeypatch):
    from skipbench.execute import stage

    rows = [json.loads(line) for line in gzip.open(HUMANEVAL_PLUS, "rt")][:2]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n"
                               for r in rows))  # fmt: skip
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(HUMANEVAL_PLUS))
    args = ["evaluate", str(samples), "--dataset", "humaneval_plus", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    first = capsys.readouterr().out

    calls = []

    def no_sandbox(*a, **k):  # run_execute turns its error into a sandbox_error row
        calls.append(a[3].task_id)
        raise RuntimeError("executed again")

    monkeypatch.setattr(stage, "execute_one", no_sandbox)
    assert main(args) == 0
    assert calls == [] and capsys.readouterr().out == first  # nothing executed again, same pass@1
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text(lines[0] + json.dumps({"task_id": rows[1]["task_id"], "completion": "    return None\n"}) + "\n")
    main(args)
    assert calls == [rows[1]["task_id"]] * 2  # the changed solution only, base and plus
