"""What reruns and what does not: content hashes instead of mtimes, caches that ignore
Snakemake's own files, leftovers of killed jobs."""

import os
import subprocess
import sys
import time

import pytest

from skipbench.infer.stage import model_fingerprint
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
    from skipbench.infer import stage as infer
    from skipbench.benchmarks.tasks import Task
    from skipbench.skip.strategies import SkipRule

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    tasks = [Task(f"T/{i}", f"def f{i}():\n", f"f{i}", "") for i in range(3)]
    gen = infer.GenerationSettings.from_config({"max_new_tokens": 8, "batch_size": 1})

    def cache():
        return infer.open_cache(model, tasks, "dense", SkipRule.from_config({"strategy": "dense"}), {"name": "x"},
                                gen, tmp_path / "cache", False, None)

    run_dir = cache().run_dir
    for i, t in enumerate(tasks):
        infer._save_batch(run_dir, f"k{i}", {"wall_s": 0.5, "samples": [
            {"task_id": t.task_id, "prompt_sha": infer.stable_hash(t.prompt), "completion": f"  return {i}\n"}]})
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
