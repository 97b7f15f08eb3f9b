"""What reruns and what does not: content hashes instead of mtimes, caches that ignore
Snakemake's own files, leftovers of killed jobs."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skipbench.infer.batch_cache import model_fingerprint
from skipbench.io import content_hash, sampled_digest


def test_content_hash_follows_content_not_mtime(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    before = content_hash([a, b])
    os.utime(a, (time.time() + 100, time.time() + 100))  # a clone or `touch` gives new mtimes
    assert content_hash([a, b]) == before
    a.write_text("x = 2\n")
    assert content_hash([a, b]) != before


def test_sampled_digest_sees_a_change_anywhere_in_a_big_file(tmp_path):
    f = tmp_path / "w.bin"
    data = bytearray(os.urandom(5 << 20))
    f.write_bytes(data)
    before = sampled_digest(f)
    data[1234] ^= 1  # inside the first sampled chunk
    f.write_bytes(data)
    assert sampled_digest(f) != before
    small = tmp_path / "s.bin"
    small.write_bytes(b"abc")
    assert sampled_digest(small) != sampled_digest(f)


def test_model_fingerprint_ignores_snakemake_files_and_mtimes(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(os.urandom(3 << 20))
    before = model_fingerprint(tmp_path)
    (tmp_path / ".snakemake_timestamp").touch()  # what `snakemake --touch` adds to a directory output
    for p in tmp_path.iterdir():
        os.utime(p, (time.time() + 100, time.time() + 100))
    assert model_fingerprint(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(os.urandom(3 << 20))  # retrained weights
    assert model_fingerprint(tmp_path) != before


def test_atomic_dir_removes_staging_folders_of_a_killed_job(tmp_path):
    from skipbench.io import atomic_dir

    stale = tmp_path / ".checkpoint.abc123.tmp"  # what a kill -9 inside atomic_dir leaves
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "w.safetensors").write_bytes(b"x")
    other = tmp_path / ".converted.abc.tmp"  # another output's staging: not ours to remove
    other.mkdir()
    with atomic_dir(tmp_path / "checkpoint") as tmp:
        (tmp / "config.json").write_text("{}")
    assert not stale.exists() and other.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint")] == []
    assert (tmp_path / "checkpoint" / "config.json").exists()


CHILD = """
import multiprocessing, sys, time
from skipbench.infer.lifetime import register

def grandchild(pid_file):
    register()  # as vLLM's plugin loader does in EngineCore and its workers
    open(pid_file, "w").write(str(multiprocessing.current_process().pid))
    time.sleep(120)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[2])
    ctx.Process(target=grandchild, args=(sys.argv[1],)).start()
    time.sleep(120)
"""


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_processes_started_by_a_killed_job_die_with_it(tmp_path, start_method):
    psutil = pytest.importorskip("psutil")
    script, pid_file = tmp_path / "job.py", tmp_path / "child.pid"
    script.write_text(CHILD)
    job = subprocess.Popen([sys.executable, str(script), str(pid_file), start_method])
    try:
        deadline = time.monotonic() + 120  # a spawned child imports torch-free code: seconds
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        child = psutil.Process(int(pid_file.read_text()))  # written after register()
        assert child.is_running()
        job.kill()  # kill -9: no cleanup code runs in the job
        job.wait()
        gone, alive = psutil.wait_procs([child], timeout=60)
        assert not alive, f"{child} outlived its killed parent"
    finally:
        job.kill()


def test_corrupt_cache_entries_are_regenerated_with_a_warning(tmp_path, caplog):
    from skipbench.infer import batch_cache
    from skipbench.io import stable_hash
    from skipbench.benchmarks.tasks import Task
    from skipbench.skip.strategies import SkipRule

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    tasks = [Task(f"T/{i}", f"def f{i}():\n", f"f{i}", "") for i in range(3)]
    gen = batch_cache.GenerationSettings.from_config({"max_new_tokens": 8, "batch_size": 1})

    def cache():
        return batch_cache.open_cache(model, tasks, "dense", SkipRule.from_config({"strategy": "dense"}), {"name": "x"},
                                gen, tmp_path / "cache", False, None)

    run_dir = cache().run_dir
    for i, t in enumerate(tasks):
        batch_cache.save_batch(run_dir, f"k{i}", {"wall_s": 0.5, "samples": [
            {"task_id": t.task_id, "prompt_sha": stable_hash(t.prompt), "completion": f"  return {i}\n"}]})
    assert cache().todo == []
    truncated, altered = run_dir / "batch-k0.json", run_dir / "batch-k1.json"
    truncated.write_text(truncated.read_text()[:40])  # disk full mid-write outside atomic writes
    altered.write_text(altered.read_text().replace("return 1", "return 7"))  # valid JSON, wrong content
    (run_dir / "trace-k1.parquet").write_bytes(b"trace")
    with caplog.at_level("WARNING"):
        again = cache()
    assert [t.task_id for t in again.todo] == ["T/0", "T/1"]
    assert [s["completion"] for b in again.done for s in b["samples"]] == ["  return 2\n"]
    assert not truncated.exists() and not altered.exists() and not (run_dir / "trace-k1.parquet").exists()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "batch-k0.json is corrupt" in warned and "JSONDecodeError" in warned and "checksum mismatch" in warned


def test_staging_folder_of_a_live_job_is_kept(tmp_path):
    from skipbench.io import atomic_dir
    from skipbench.jobs import process_start

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = tmp_path / f".checkpoint.{live.pid}-{process_start(live.pid)}.x1.tmp"  # an orphan still writing
        dead = tmp_path / f".checkpoint.{live.pid}-{process_start(live.pid) - 1}.x2.tmp"  # its pid, reused
        for d in (kept, dead):
            d.mkdir()
        with atomic_dir(tmp_path / "checkpoint") as tmp:
            (tmp / "config.json").write_text("{}")
        assert kept.exists() and not dead.exists()
    finally:
        live.kill()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_shards_follow_the_umask(tmp_path, umask):
    import torch
    from safetensors.torch import save_file

    from skipbench.io import atomic_dir

    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "checkpoint") as tmp:
            save_file({"w": torch.zeros(2)}, tmp / "model-00001.safetensors")  # safetensors writes 0600
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    out = tmp_path / "checkpoint"
    assert (out / "model-00001.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (out / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_job_refuses_outputs_a_live_job_holds(tmp_path):
    from skipbench.jobs import OutputsHeld, hold_outputs, lock_path

    out = tmp_path / "scores.parquet"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from skipbench.jobs import hold_outputs
hold_outputs({str(out)!r}); print("held", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputsHeld, match=f"pid {holder.pid}"):
            hold_outputs(out)
        holder.kill()  # kill -9: its lock stays, naming a dead process
        holder.wait()
        assert lock_path(out).exists()
        assert hold_outputs(out) == lock_path(out)  # taken over
    finally:
        holder.kill()


SLEEPER = """
rule long:
    output: "done"
    script: "long.py"
"""
LONG_JOB = """
import subprocess
from skipbench.jobs import start_job
start_job(snakemake)
child = subprocess.Popen(["sleep", "300"])  # what a job starts: an engine, a sandbox
open("pids", "w").write(f"{__import__('os').getpid()} {child.pid}")
child.wait()
"""


@pytest.mark.slow
def test_kill_of_snakemake_leaves_no_live_job(tmp_path):
    """kill -9 of Snakemake during a long job: the job and what it started die with it."""
    from skipbench.jobs import process_start

    (tmp_path / "Snakefile").write_text(SLEEPER)
    (tmp_path / "long.py").write_text(LONG_JOB)
    snakemake = subprocess.Popen([str(Path(sys.executable).with_name("snakemake")), "--cores", "1", "-d", str(tmp_path),
                                  "-s", str(tmp_path / "Snakefile")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        starts = [process_start(p) for p in pids]
        assert all(starts)
        snakemake.kill()
        snakemake.wait()
        deadline = time.monotonic() + 30
        while any(process_start(p) == s for p, s in zip(pids, starts)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p, s in zip(pids, starts) if process_start(p) == s], "a job outlived its Snakemake"
    finally:
        snakemake.kill()
