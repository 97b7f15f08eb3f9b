"""Snakemake's rerun records saved beside the results and put back from there."""

import json
import os

from snakemake.persistence.file import FilePersistence

from skipbench import sidecars


def snakemake_record_path(metadata, key):
    """Snakemake's own layout (the reference): FilePersistence._record_path."""
    persistence = object.__new__(FilePersistence)
    persistence._max_len = None
    return persistence._record_path(str(metadata), key)


def test_record_path_is_snakemakes(tmp_path):
    metadata = tmp_path / ".snakemake/metadata"
    metadata.mkdir(parents=True)
    for key in ["results/r/score/scores.parquet", "results/r/" + "x" * 400 + "/long.parquet"]:
        assert str(sidecars.record_path(metadata, key)) == snakemake_record_path(metadata, key)


def test_records_travel_with_the_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metadata = tmp_path / ".snakemake/metadata"
    metadata.mkdir(parents=True)
    outputs = ["results/r/score/scores.parquet", "results/r/" + "/".join(["d" * 100] * 3) + "/t.parquet", "results/r/killed.parquet"]
    records = {}
    for out in outputs + ["results/other/x.parquet"]:  # another run's record stays out
        os.makedirs(os.path.dirname(out), exist_ok=True)
        open(out, "w").close()
        records[out] = {"rule": "score", "params": ["'abc'"], "incomplete": out.endswith("killed.parquet")}
        path = sidecars.record_path(metadata, out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records[out]))
    assert sidecars.save("results/r", metadata) == 3
    assert json.loads((tmp_path / "results/r/.provenance/score/scores.parquet.json").read_text()) == records[outputs[0]]
    assert not (tmp_path / "results/other/.provenance").exists()
    assert sidecars.save("results/r", metadata) == 0  # unchanged: nothing rewritten

    # a copy without .snakemake/: the records of finished outputs come back, byte for byte
    for p in sorted(metadata.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    os.remove(outputs[0])  # an output gone: no record for it
    assert sidecars.restore("results/r", metadata) == 1
    restored = sidecars.record_path(metadata, outputs[1])
    assert json.loads(restored.read_text()) == records[outputs[1]]
    assert not sidecars.record_path(metadata, outputs[2]).exists()  # a killed job's record: not put back


def test_a_torn_sidecar_is_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("results/r/.provenance/score")
    open("results/r/score.parquet", "w").close()
    open("results/r/.provenance/score.parquet.json", "w").write('{"rule": ')
    open("results/r/.provenance/score/[1].json", "w").write("[1]")
    assert sidecars.restore("results/r", tmp_path / "m") == 0
