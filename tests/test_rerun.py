"""What reruns and what does not: content hashes instead of mtimes, caches that ignore
Snakemake's own files, leftovers of killed jobs."""

import os
import time

from skipbench.infer import model_fingerprint
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
