"""The report shows its numbers: every caption renders without docutils warnings (with
the default config and every preset), tables become HTML, and a built report.html
embeds the summary and scores as HTML tables."""

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml
from docutils.core import publish_parts
from snakemake.utils import update_config

from skipbench.report.report_tables import frame_page, markdown_page

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = sorted((ROOT / "workflow/report").glob("*.rst"))
# Wildcards of the rules whose outputs use a caption; every other caption's rule has none.
WILDCARDS = {"view.rst": {"table": "score/scores"}}


def configs():
    base = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    yield "config.yaml", base
    for preset in sorted((ROOT / "config/presets").glob("*.yaml")):
        cfg = json.loads(json.dumps(base))
        update_config(cfg, yaml.safe_load(preset.read_text()))
        yield preset.name, cfg


@pytest.mark.parametrize("caption", CAPTIONS, ids=lambda p: p.name)
def test_caption_renders_without_warnings(caption):
    """As Snakemake renders it (Jinja, then docutils), but an undefined name is an error
    (the throughput caption once printed "variant ````": a wildcard its rule lacks)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    template = env.from_string(caption.read_text())
    for name, cfg in configs():
        wc = SimpleNamespace(**WILDCARDS.get(caption.name, {}))
        text = template.render(snakemake=SimpleNamespace(config=cfg, wildcards=wc), categories={}, files={})
        # halt_level 2: a docutils warning raises instead of rendering a visible message
        publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})


def test_markdown_table_becomes_html_rows():
    md = "| a | b \\| c |\n|---|---|\n| x | 0.5 [0.1, 0.9] |\n| y |  |\n\nnote `one`\n"
    html = markdown_page("T", md)
    assert "<th>a</th><th>b | c</th>" in html
    assert '<td class="text">x</td><td>0.5 [0.1, 0.9]</td>' in html
    assert "<td></td>" in html and '<p class="note">note one</p>' in html


def test_frame_page_escapes_and_formats():
    import pandas as pd

    html = frame_page("T", pd.DataFrame({"v": ["<b>"], "x": [0.123456], "n": [None]}))
    assert "&lt;b&gt;" in html and "<td>0.1235</td>" in html and "<b>" not in html.split("<body>")[1]


def embedded(report: str, name: str) -> str:
    match = re.search(rf"filename={re.escape(name)};base64,([A-Za-z0-9+/=]+)", report)
    assert match, f"{name} is not embedded"
    return base64.b64decode(match.group(1)).decode()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_built_report_shows_summary_and_scores_as_tables(tmp_path):
    """External samples only (no model, no engine): execute, score, figures, views, report."""
    from skipbench.benchmarks.tasks import load_tasks

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    tasks = load_tasks({"dataset": "humaneval", "tasks": 3})
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t.task_id, "completion": t.canonical_solution if i else "    return None\n"}) + "\n"
                               for i, t in enumerate(tasks)))  # fmt: skip
    cfg |= {"run": "ext", "variants": {"dense": {"strategy": "dense"}},
            "benchmarks": {"he": {"dataset": "humaneval", "tasks": 3, "samples": str(samples), "variants": []}}}  # fmt: skip
    cfg["engine"]["enforce_eager"] = False  # no traces wanted: no traffic / roofline stages
    cfg["throughput"]["variants"] = []
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    base = [str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
            "--configfile", str(tmp_path / "config.yaml"), "--replace-workflow-config"]  # fmt: skip
    for args in (["--cores", "2"], ["--report", str(tmp_path / "report.html")]):
        proc = subprocess.run(base + args, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Could not detect mimetype" not in proc.stderr
    report = (tmp_path / "report.html").read_text()
    assert "System Message" not in report  # docutils warnings render as these
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "results/ext/score/scores.parquet").to_pylist()[0]
    p, lo, hi = row["pass1_base"], row["pass1_base_lo"], row["pass1_base_hi"]  # 2 of 3 unless the load times one out
    summary = embedded(report, "summary.html")
    assert "<table>" in summary and f"<td>{p:.3f} [{lo:.3f}, {hi:.3f}]</td>" in summary
    scores = embedded(report, "scores.html")
    assert "<th>pass1_base</th>" in scores and f"<td>{p:.4g}</td>" in scores
    assert "data:application/vnd.apache.parquet" in report
    evalplus = json.loads((tmp_path / "results/ext/execute/he/external_eval_results.json").read_text())
    statuses = [r[0]["base_status"] for r in evalplus["eval"].values()]
    assert statuses[0] == "fail" and sum(s == "pass" for s in statuses) == round(3 * p)
