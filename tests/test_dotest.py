"""The `.test/` configuration (catalog convention): valid, and its DAG builds."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
DOTEST = ROOT / ".test/config/config.yaml"


def test_dotest_config_validates():
    cfg = yaml.safe_load(DOTEST.read_text())
    validate(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"))
    assert cfg["run"] == "test" and cfg["benchmarks"]["humaneval"]["tasks"] == 3 and len(cfg["variants"]) == 2


@pytest.mark.slow
def test_dotest_config_dry_run():
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "-n", "--quiet", "rules",
           "--cores", "2", "--configfile", str(DOTEST), "--replace-workflow-config"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.strip().split()[:1] in (["infer"], ["execute"]))
    assert jobs == {"infer": "2", "execute": "2"}, proc.stdout  # the two .test variants, not the default's 15
