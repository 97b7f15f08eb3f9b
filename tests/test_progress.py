"""Progress lines: on the terminal Snakemake shows and in the log file, no \\r walls."""

import os
import subprocess
import sys
import time

from skipbench.progress import ENV, heartbeat, status_line, track


def test_status_line_has_phase_count_rate_eta():
    line = status_line("memorise", 30, 120, 15.0, "step", {"loss": "0.41"})
    assert line == "memorise: 30/120 step (25%), 2 step/s, ETA 45s, elapsed 15s, loss=0.41"
    assert status_line("infer", 2, None, 100.0, "batch", {}) == "infer: 2 batch, 50 s/batch, elapsed 1m40s"
    assert "ETA" not in status_line("x", 0, 5, 0.0, "it", {})


def _read_all(fd):
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 16).decode()
    except BlockingIOError:
        return ""


def test_track_writes_to_the_terminal_fd_of_this_process_only(monkeypatch, capsys):
    r, w = os.pipe()
    monkeypatch.setenv(ENV, f"{os.getpid()}:{w}")
    t = track(range(3), desc="execute he", unit="run")
    t.every = 0  # a line per item
    assert list(t) == [0, 1, 2]
    lines = _read_all(r).splitlines()
    assert lines[0].startswith("[skipbench] execute he: 0/3 run (0%)")
    assert lines[-1].startswith("[skipbench] execute he: 3/3 run (100%)")
    # another pid (a child that inherited the environment): stderr, never the stranger's fd
    monkeypatch.setenv(ENV, f"{os.getpid() + 1}:{w}")
    list(track(range(2), desc="other"))
    assert "other: 2/2 it (100%)" in capsys.readouterr().err and _read_all(r) == ""
    os.close(r)
    os.close(w)


def test_heartbeat_beats_while_blocking_and_is_quiet_when_short(capsys, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with heartbeat("engine start", every=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "engine start: running, elapsed" in err and "engine start: done in" in err
    with heartbeat("generate", every=5):
        pass
    assert capsys.readouterr().err == ""


def test_log_to_keeps_snakemakes_stderr_for_progress(tmp_path):
    """A job script: output to its log, progress lines to the job's original stderr too."""
    log = tmp_path / "job.log"
    code = ("from skipbench.logs import log_to; from skipbench.progress import track\n"
            f"log_to({str(log)!r})\nprint('engine chatter')\nlist(track(range(4), desc='memorise', unit='step'))\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != ENV})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[skipbench] memorise: 4/4 step (100%)" in proc.stderr and "engine chatter" not in proc.stderr
    text = log.read_text()
    assert "engine chatter" in text and "memorise: 4/4 step (100%)" in text and "\r" not in text
