"""Teacher-forced fidelity: KL and top-1 agreement to dense on dense's own completions."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from skipbench.benchmarks.tasks import Task
from skipbench.score.fidelity import FIDELITY_SCHEMA, compare, run_fidelity
from tiny_models import write_tiny_dsv3


def test_compare_by_hand():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    q = torch.tensor([[0.5, 0.5], [0.2, 0.8]]).log()
    out = compare([p], [q])
    kl2 = 0.9 * math.log(0.9 / 0.2) + 0.1 * math.log(0.1 / 0.8)
    assert out["positions"] == 2 and out["kl_mean"] == pytest.approx(kl2 / 2)
    assert out["top1_agree"] == 0.5  # position 0: both argmax 0; position 1 differs
    assert compare([p], [p])["kl_mean"] == 0.0 and compare([], [])["positions"] == 0


def test_run_fidelity_on_a_tiny_model(tmp_path):
    from transformers import AutoTokenizer

    model = write_tiny_dsv3(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(model)
    tasks = [Task(f"T/{i}", f"def f{i}(x):\n    return x", "f", "") for i in range(3)]
    gen = torch.Generator().manual_seed(0)
    rows = [dict(task_id=t.task_id, sample=0, prompt_tokens=len(tok(t.prompt).input_ids),
                 token_ids=torch.randint(2, 200, (6,), generator=gen).tolist()) for t in tasks]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dense.parquet")
    variants = {"dense": {"strategy": "dense"}, "nothing": {"strategy": "layers", "layers": []},
                "top1": {"strategy": "router_topk", "k": 1},
                "top1-decode": {"strategy": "router_topk", "k": 1, "decode_only": True},
                "mask1-decode": {"strategy": "topk", "k": 1, "decode_only": True},
                "oea1-decode": {"strategy": "batch_aware", "k0": 1, "decode_only": True}}
    dense = tmp_path / "dense.parquet"
    got = {}
    for name, cfg in variants.items():  # one job per variant; dense's measures the noise floor
        out = tmp_path / f"fidelity-{name}.parquet"
        run_fidelity(model, tasks, "he", dense, name, cfg, out, batch_size=2, deployment_batch=1,
                     noise_floor=None if name == "dense" else tmp_path / "fidelity-dense.parquet")
        table = pq.read_table(out)
        assert table.schema == FIDELITY_SCHEMA
        assert table["variant"].to_pylist() == ["dense"] + ([name] if name != "dense" else [])  # floor first
        got[name] = table.to_pylist()[-1]
    floor = got["dense"]
    assert floor["reference"] == "dense in bfloat16" and floor["positions"] == 18
    # bf16 rounding: far above fp32 batching noise (~1e-9 nats), the drift serving in bf16 costs
    assert 1e-6 < floor["kl_mean"] < got["top1"]["kl_mean"]
    assert got["nothing"]["kl_mean"] == 0.0 and got["nothing"]["top1_agree"] == 1.0  # same batches: exact
    # decode_only: the prompt stays dense, completion positions skip: some drift, less than everywhere
    assert 0 < got["top1-decode"]["kl_mean"] < got["top1"]["kl_mean"]
    # OEA at batch 1 decodes one token per forward: exactly top-k0 per token, so its KL is the
    # top-1 mask's (measured over whole sequences): not the 0 of one batch holding everything
    oea = got["oea1-decode"]
    assert oea["method"].startswith("teacher-forced decode, one completion token per forward")
    assert oea["kl_mean"] == pytest.approx(got["mask1-decode"]["kl_mean"], rel=1e-4)
    assert oea["top1_agree"] == got["mask1-decode"]["top1_agree"]
    whole = tmp_path / "oea-whole.parquet"  # above batch 1: n/a with the reason, no number
    run_fidelity(model, tasks, "he", dense, "oea1", variants["oea1-decode"], whole, batch_size=2,
                 noise_floor=tmp_path / "fidelity-dense.parquet")
    na = pq.read_table(whole).to_pylist()[-1]
    assert na["kl_mean"] is None and na["top1_agree"] is None and na["method"].startswith("n/a: batch_aware")
    with pytest.raises(ValueError, match="noise floor"):  # a variant that skips needs dense's table
        run_fidelity(model, tasks, "he", dense, "top1", variants["top1"], out)
    rows[1]["prompt_tokens"] += 1
    pq.write_table(pa.Table.from_pylist(rows), dense)
    with pytest.raises(ValueError, match="task T/1: prompt is"):
        run_fidelity(model, tasks, "he", dense, "dense", variants["dense"], out)
