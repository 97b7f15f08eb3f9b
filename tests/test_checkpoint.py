"""Stage `checkpoint`: the synthetic release layout, memorisation, and the Hub source."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file

from skipbench.benchmarks.tasks import Task
from skipbench.model.checkpoint import TRAINING_SCHEMA, run_checkpoint
from skipbench.model.fp8 import QUANTIZATION_CONFIG, convert_checkpoint
from skipbench.io import read_table, sha256_file
from skipbench.model.layout import MANIFEST_SCHEMA, read_index
from test_tinymodel import MICRO_ARCH

TASKS = [
    Task("T/0", 'def inc(x):\n    """Return x plus one."""\n', "inc", "    return x + 1\n"),
    Task("T/1", 'def evens(xs):\n    """Keep the even numbers of xs."""\n', "evens",
         "    return [x for x in xs if x % 2 == 0]\n"),
]


def model_cfg(memorise: bool, shards: int = 3) -> dict:
    return {
        "source": "synthetic",
        "synthetic": {
            "seed": 0, "shards": shards, "architecture": dict(MICRO_ARCH), "vocab_size": 384,
            "memorise": {"enabled": memorise, "max_steps": 150, "lr": 3.0e-3, "target_loss": 0.03},
        },
    }


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    run_checkpoint(model_cfg(memorise=False), TASKS, root / "model", root / "manifest.parquet", root / "training.parquet")
    return root


def test_release_layout(random_ckpt):
    d = random_ckpt / "model"
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted(p.name for p in d.glob("*.safetensors")) == shards
    index = read_index(d)
    wm = index["weight_map"]
    assert sorted(set(wm.values())) == shards
    total, found = 0, {}
    for shard in shards:
        with safe_open(d / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for k in f.keys():
                found[k] = f.get_tensor(k)
                assert wm[k] == shard
                total += found[k].numel() * found[k].element_size()
    assert set(found) == set(wm) and index["metadata"]["total_size"] == total
    # Release names and dtypes: FP8 Linear weights with fp32 block scales, the rest bf16/fp32.
    w = found["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
    assert w.dtype == torch.float8_e4m3fn and w.shape == (576, 128)
    assert found["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (5, 1)  # ragged 576
    assert found["model.layers.1.mlp.experts.7.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert found["model.layers.1.mlp.experts.7.down_proj.weight_scale_inv"].dtype == torch.float32
    assert found["model.layers.1.mlp.shared_experts.gate_proj.weight"].dtype == torch.float8_e4m3fn
    assert found["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert found["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    assert found["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    for k in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
              "model.layers.0.self_attn.kv_a_layernorm.weight"]:
        assert found[k].dtype == torch.bfloat16, k
    assert not any(".experts.gate_up_proj" in k for k in wm)  # no transformers-fused names
    fp8_weights = [k for k, t in found.items() if t.dtype == torch.float8_e4m3fn]
    assert all(k + "_scale_inv" in wm for k in fp8_weights)
    assert any(wm[k] != wm[k + "_scale_inv"] for k in fp8_weights)  # a scale in another shard
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["model_type"] == "deepseek_v3"
    assert config["quantization_config"] == QUANTIZATION_CONFIG
    assert (config["topk_method"], config["scoring_func"], config["norm_topk_prob"]) == ("noaux_tc", "sigmoid", True)
    gen = json.loads((d / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (0, 1)
    assert (d / "tokenizer.json").exists() and (d / "tokenizer_config.json").exists()


def test_manifest_and_training_report(random_ckpt):
    d = random_ckpt / "model"
    rows = read_table(random_ckpt / "manifest.parquet", MANIFEST_SCHEMA).to_pylist()
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert [r["file"] for r in rows] == files
    for r in rows:
        assert r["bytes"] == (d / r["file"]).stat().st_size and r["sha256"] == sha256_file(d / r["file"])
    (row,) = read_table(random_ckpt / "training.parquet", TRAINING_SCHEMA).to_pylist()
    assert row["source"] == "synthetic" and row["memorise_enabled"] is False and row["memorised"] is False
    assert row["steps"] == 0 and row["parameters"] > 0


def test_synthetic_is_deterministic(random_ckpt, tmp_path):
    run_checkpoint(model_cfg(memorise=False), TASKS, tmp_path / "m", tmp_path / "man.parquet", tmp_path / "t.parquet")
    a = read_table(random_ckpt / "manifest.parquet").to_pylist()
    assert read_table(tmp_path / "man.parquet").to_pylist() == a


def test_converted_checkpoint_loads_in_transformers(random_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skipbench.model import tinymodel
    from skipbench.model.checkpoint import dequantized

    out = tmp_path / "bf16"
    convert_checkpoint(random_ckpt / "model", out, "fp8_to_bf16", device="cpu")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    fp8 = {}
    for shard in set(read_index(random_ckpt / "model")["weight_map"].values()):
        with safe_open(random_ckpt / "model" / shard, "pt") as f:
            fp8.update({k: f.get_tensor(k) for k in f.keys()})
    # transformers' loader fuses the per-expert release tensors back; every value survives.
    loaded = tinymodel.release_state_dict(model)
    want = dequantized(fp8)
    assert set(loaded) == set(want)
    for k, t in want.items():
        assert torch.equal(loaded[k], t.float()), k
    ids = tok(TASKS[0].prompt, return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


@pytest.fixture
def one_torch_thread():
    # Other test processes share the CPUs; OpenMP threads that spin-wait on busy cores make
    # 2-thread training 5-20x slower than 1 thread. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_memorisation_reproduces_two_tasks(tmp_path, one_torch_thread):
    run_checkpoint(model_cfg(memorise=True, shards=2), TASKS, tmp_path / "m", tmp_path / "man.parquet",
                   tmp_path / "t.parquet")
    (row,) = read_table(tmp_path / "t.parquet", TRAINING_SCHEMA).to_pylist()
    assert row["memorised"] and row["tasks_reproduced_fp8"] == 2 == row["tasks_total"]
    assert row["reproduced_task_ids"] == ["T/0", "T/1"]
    assert row["final_loss"] <= 0.03 and row["steps"] == len(row["loss_curve"]) <= 150


# --- source `huggingface` against a local fake of the Hub's HTTP API --------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub(BaseHTTPRequestHandler):
    """The three endpoints snapshot_download uses: tree listing, HEAD and GET of a file."""

    files: dict[str, bytes] = {}
    missing: set[str] = set()  # files that answer 404 (an interrupted download)
    gets: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _file(self):
        prefix = f"/org/tiny/resolve/{COMMIT}/"
        name = self.path.split("?")[0].removeprefix(prefix)
        if not self.path.startswith(prefix) or name not in self.files or name in self.missing:
            self.send_error(404)
            return None
        data = self.files[name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return name, data

    def do_HEAD(self):
        self._file()

    def do_GET(self):
        if self.path.startswith(f"/api/models/org/tiny/tree/{COMMIT}"):
            body = json.dumps([
                {"type": "file", "path": k, "size": len(v), "oid": hashlib.sha1(v).hexdigest()}
                for k, v in sorted(self.files.items())
            ]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        got = self._file()
        if got:
            self.gets.append(got[0])
            self.wfile.write(got[1])


@pytest.fixture
def fake_hub(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32)}, repo / "model-00001-of-00001.safetensors")
    FakeHub.files = {
        "config.json": b'{"model_type": "deepseek_v3"}',
        "model-00001-of-00001.safetensors": (repo / "model-00001-of-00001.safetensors").read_bytes(),
        "model.safetensors.index.json": b'{"metadata": {"total_size": 24}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}',
        "README.md": b"not wanted",
        "original/big.bin": b"\0" * 1000,
    }
    FakeHub.missing, FakeHub.gets = set(), []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_huggingface_source_downloads_pinned_files_and_resumes(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    cfg = {"source": "huggingface", "huggingface": {
        "repo_id": "org/tiny", "revision": COMMIT, "endpoint": fake_hub,
        "allow_patterns": ["*.json", "*.safetensors"]}}
    out, manifest, report = tmp_path / "ckpt", tmp_path / "manifest.parquet", tmp_path / "training.parquet"
    # First try: the shard is unavailable; the run fails and leaves no checkpoint behind.
    FakeHub.missing = {"model-00001-of-00001.safetensors"}
    with pytest.raises(RuntimeError, match="org/tiny@0123.*rerun to resume") as err:
        run_checkpoint(cfg, [], out, manifest, report)
    assert isinstance(err.value.__cause__, EntryNotFoundError)
    assert not out.exists() and not manifest.exists()
    # Second try resumes: files completed before stay, only the others go over the wire.
    # Which files the first try completed depends on huggingface_hub's parallel fetch order,
    # so the test reads them from the staging folder instead of assuming an order.
    staging = tmp_path / ".ckpt.download"
    done_before = {
        p.relative_to(staging).as_posix() for p in staging.rglob("*")
        if p.is_file() and ".cache" not in p.parts and p.read_bytes() == FakeHub.files.get(p.relative_to(staging).as_posix())
    }
    assert "model-00001-of-00001.safetensors" not in done_before
    FakeHub.missing, FakeHub.gets = set(), []
    run_checkpoint(cfg, [], out, manifest, report)
    assert "model-00001-of-00001.safetensors" in FakeHub.gets
    assert not set(FakeHub.gets) & done_before, "a file completed before was fetched again"
    assert len(FakeHub.gets) == len(set(FakeHub.gets))
    want = ["config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == want
    rows = read_table(manifest, MANIFEST_SCHEMA).to_pylist()
    assert [r["file"] for r in rows] == want
    for r in rows:
        assert r["sha256"] == hashlib.sha256(FakeHub.files[r["file"]]).hexdigest()
        assert r["bytes"] == len(FakeHub.files[r["file"]])
    (row,) = read_table(report, TRAINING_SCHEMA).to_pylist()
    assert row["source"] == "huggingface" and row["steps"] == 0 and not row["memorised"]


def test_huggingface_source_needs_a_revision(tmp_path):
    cfg = {"source": "huggingface", "huggingface": {"repo_id": "org/tiny", "revision": ""}}
    with pytest.raises(ValueError, match="revision"):
        run_checkpoint(copy.deepcopy(cfg), [], tmp_path / "c", tmp_path / "m.parquet", tmp_path / "t.parquet")


TRAIN_TWICE = """
import hashlib, json, sys
from pathlib import Path
from skipbench.reproducible import pin_cpu_paths
pin_cpu_paths()  # as workflow/scripts/checkpoint.py, before torch loads
import torch
from skipbench.benchmarks.tasks import Task
from skipbench.model.checkpoint import synthetic_checkpoint
threads, out, synth, tasks = int(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(threads)  # what the caller happens to have: must not matter
out.mkdir(parents=True)
row = synthetic_checkpoint(synth, [Task(**t) for t in tasks], out)
digest = hashlib.sha256()
for p in sorted(out.rglob("*")):
    if p.is_file():
        digest.update(p.name.encode() + p.read_bytes())
print(json.dumps({"sha256": digest.hexdigest(), "losses": row["loss_curve"], "threads": torch.get_num_threads()}))
"""


def test_training_is_bit_identical_whatever_the_thread_count(tmp_path):
    synth = model_cfg(memorise=True)["synthetic"]
    synth["memorise"] |= {"max_steps": 12, "target_loss": 0.0}  # every step runs
    tasks = json.dumps([t.__dict__ for t in TASKS], default=list)
    runs = []
    for threads in (1, 2):
        proc = subprocess.run([sys.executable, "-c", TRAIN_TWICE, str(threads), str(tmp_path / f"t{threads}"),
                               json.dumps(synth), tasks], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert len(runs[0]["losses"]) == 12
    assert runs[0]["losses"] == runs[1]["losses"]
    assert runs[0]["sha256"] == runs[1]["sha256"]
    assert [r["threads"] for r in runs] == [1, 2]  # the caller's setting is restored afterwards


TRAIN_EMBEDDED = """
import hashlib, json, sys
from pathlib import Path
from skipbench.reproducible import pin_cpu_paths
pin_cpu_paths()
import torch, yaml
from skipbench.benchmarks.tasks import Task, memorised_tasks
from skipbench.model.checkpoint import synthetic_checkpoint
config, threads, out = yaml.safe_load(Path(sys.argv[1]).read_text()), int(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(threads)
out.mkdir(parents=True)
tasks = [Task(**t) for t in memorised_tasks(config["benchmarks"])]
row = synthetic_checkpoint(config["model"]["synthetic"], tasks, out)
shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.safetensors"))}
print(json.dumps({"steps": row["steps"], "shards": shards}))
"""


@pytest.mark.slow  # trains the embedded default: about 2 minutes on one core
def test_embedded_default_trains_to_the_checkpoint_readme_states(tmp_path):
    """README's digests were recorded with the workflow (one torch thread); this run starts
    with two: the same shards must come out."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    stated = re.findall(r"`([0-9a-f]{8})\.\.\.([0-9a-f]{4,8})`", readme[readme.index("Training is bit-reproducible"):])
    assert len(stated) == 3, stated
    proc = subprocess.run([sys.executable, "-c", TRAIN_EMBEDDED, str(root / "config/config.yaml"), "2", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    digests = [got["shards"][f"model-0000{i}-of-00003.safetensors"] for i in (1, 2, 3)]
    assert [(d[:8], d[-len(tail):]) for d, (_, tail) in zip(digests, stated)] == stated, digests
    assert f"{got['steps']} training steps" in readme
