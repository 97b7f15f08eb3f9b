"""kernels/replay_device.py and its phase in kernels/device_check.sh, rehearsed on CPU
(tiny shapes, Triton's interpreter): what the one GPU call will run and write."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("triton")


def replay_device(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "workflow")}
    return subprocess.run([sys.executable, str(ROOT / "kernels/replay_device.py"), "--out", str(out), "--smoke", *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def read_calibration(out: Path) -> tuple[str, pd.DataFrame]:
    (cal,) = out.glob("hardware_*_replay_*.csv")
    assert re.fullmatch(r"hardware_cpu-interpreter_replay_\d{4}-\d\d-\d\d\.csv", cal.name)
    return cal.read_text().splitlines()[0], pd.read_csv(cal, comment="#")


def test_past_its_budget_every_row_says_not_run(tmp_path):
    proc = replay_device(tmp_path, "--budget-s", "0", "--batches", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "replay_rows.csv")
    assert set(rows["method"]) == {"triton_v2_fp8", "triton_v2_bf16", "grouped_mm_bf16"}
    assert (rows["status"] == "not run: time budget").all() and rows["ms"].isna().all()  # never estimated
    head, cal = read_calibration(tmp_path)
    assert head.startswith("# cpu-interpreter,") and cal.empty  # only measured rows calibrate


@pytest.mark.slow  # the interpreter runs the kernels: ~30 s
def test_rehearsal_times_every_method_on_the_same_routing(tmp_path):
    proc = replay_device(tmp_path, "--batches", "1", "--rules", "dense", "top2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, cal = read_calibration(tmp_path)
    assert len(cal) == 6 and (cal["ms"] > 0).all() and (cal["status"] == "ok").all()
    # costmodel's columns are there (skipbench.speed.costmodel.BENCH_COLUMNS + ms)
    assert {"batch", "rule", "distinct_experts", "slots", "ms"} <= set(cal.columns)
    by = cal.set_index(["method", "rule"])
    for method in ("triton_v2_fp8", "triton_v2_bf16", "grouped_mm_bf16"):  # the same routing for every method
        assert by.loc[(method, "top2"), "distinct_experts"] == by.loc[("grouped_mm_bf16", "top2"), "distinct_experts"]
        assert by.loc[(method, "top2"), "distinct_experts"] <= by.loc[(method, "dense"), "distinct_experts"]
    assert "Measured replay, cpu-interpreter" in (tmp_path / "summary.md").read_text()


def test_device_check_budget_fits_one_call():
    """The phases' hard limits add up to the 540 s of one device call, and the replay is one of them."""
    script = (ROOT / "kernels/device_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "kernels/device_check.sh")]).returncode == 0
    limits = {k: int(v) for k, v in re.findall(r"^(tests_s|replay_s)=(\d+)$", script, re.M)}
    budget = int(re.search(r"budget=\$\{2:-(\d+)\}", script).group(1))
    bench = budget - 215 - limits["replay_s"]
    assert bench >= 60 and 30 + bench + limits["replay_s"] + limits["tests_s"] + 35 == budget == 540
    assert 'phase replay "$replay_s" "$py" kernels/replay_device.py' in script
