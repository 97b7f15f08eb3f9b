"""The CPU skip path (a skipped expert is never computed) and the cost model fitted on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from skipbench.speed.costmodel import fit_cost_model, load_calibration
from skipbench.speed.cpu_moe import CPU_MOE_SCHEMA, EagerMoE, MoeShape, bench_layer, keep_mask, route, savings

TINY = MoeShape(hidden=32, intermediate=16, experts=8, top_k=4)


def reference(layer: EagerMoE, x, ids, w, kept):
    """Every (token, slot) through its expert, written out; skipped slots contribute nothing."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            if kept[t, k]:
                e = ids[t, k]
                gate, up = (x[t] @ layer.gate_up[e].T).chunk(2)
                out[t] += float(w[t, k]) * ((torch.nn.functional.silu(gate) * up) @ layer.down[e].T)
    return out


def test_forward_matches_reference_and_never_touches_a_skipped_expert():
    layer = EagerMoE(TINY, seed=1)
    ids, w = route(np.random.default_rng(0), 5, TINY)
    kept = keep_mask(w, "topk:2")
    x = torch.randn(5, TINY.hidden)
    want = reference(layer, x, ids, w, kept)
    skipped = sorted(set(range(TINY.experts)) - set(ids[kept].tolist()))
    assert skipped  # 5 tokens x 2 slots of 8 experts leave some expert unused here
    for e in skipped:  # a skipped expert's weights are poisoned: any read would show
        layer.gate_up[e] = torch.full_like(layer.gate_up[e], float("nan"))
        layer.down[e] = torch.full_like(layer.down[e], float("nan"))
    assert torch.allclose(layer.forward(x, ids, w, kept), want, atol=1e-5)


def test_keep_mask_rules():
    w = np.array([[0.5, 0.3, 0.15, 0.05], [0.4, 0.35, 0.2, 0.05]], np.float32)
    assert keep_mask(w, "dense").all()
    assert keep_mask(w, "topk:2").tolist() == [[True, True, False, False]] * 2
    assert keep_mask(w, "threshold:0.5").tolist() == [[True, True, False, False], [True, True, True, False]]
    with pytest.raises(ValueError, match="unknown rule"):
        keep_mask(w, "nope")


def test_bench_counts_what_it_computed():
    torch.set_num_threads(1)
    bench = bench_layer(EagerMoE(TINY), [1, 4], ["dense", "topk:1"], calls=2)
    assert list(bench.columns) == CPU_MOE_SCHEMA.names and len(bench) == 4
    b = bench.set_index(["batch", "rule"])
    assert b.loc[(1, "topk:1"), "distinct_experts"] == 1 and b.loc[(1, "dense"), "distinct_experts"] == 4
    assert b.loc[(4, "topk:1"), "slots"] == 4 and b.loc[(4, "dense"), "slots"] == 16
    assert (bench["ms"] > 0).all()


def test_fit_recovers_terms_and_savings_side_by_side():
    shape = MoeShape(hidden=64, intermediate=32, experts=8, top_k=4)
    rows = pd.DataFrame(dict(batch=[1, 1, 4, 4, 16, 16], rule=["dense", "topk:2"] * 3,
                             distinct_experts=[4, 2, 12, 6, 8, 8], slots=[4, 2, 16, 8, 64, 32]))  # fmt: skip
    bw, rate = 1e10, 1e9
    rows["ms"] = 0.2 + 0.05 * rows["distinct_experts"] + rows["distinct_experts"] * shape.expert_bytes / bw * 1e3 \
        + rows["slots"] * shape.pair_flops / rate * 1e3  # fmt: skip
    cost = fit_cost_model(rows, "ms", shape.expert_bytes, shape.pair_flops, bw, "synthetic")
    assert (cost.layer_ms, cost.expert_ms, cost.rate) == pytest.approx((0.2, 0.05, rate))
    sav = savings(rows, cost, shape, bw).set_index(["batch", "rule"])
    assert sav.loc[(1, "topk:2"), "ideal_saving"] == pytest.approx(0.5)
    assert sav.loc[(1, "topk:2"), "predicted_saving"] == pytest.approx(sav.loc[(1, "topk:2"), "measured_saving"])
    assert sav["prediction_error"].abs().max() < 1e-9


@pytest.mark.parametrize("bad", [
    "batch,rule\n1,dense\n",  # columns missing
    "batch,rule,distinct_experts,slots,ms\n1,dense,8,8,0.9\n",  # too few rows
    "\x00\x01garbage,,,\n\"unclosed",  # not a table
])  # fmt: skip
def test_calibration_data_errors_are_reported(tmp_path, bad):
    (tmp_path / "d.csv").write_text(bad)
    block = dict(data="d.csv", ms_column="ms", expert_bytes=1, pair_flops=1, bandwidth=1e9, device="x",
                 date="2026-01-01", source="test", dtype="bf16", hidden=4, intermediate=2, kernel="k")  # fmt: skip
    with pytest.raises(ValueError, match="calibration"):
        load_calibration(block, tmp_path, "p.yaml")
    with pytest.raises(ValueError, match="needs"):
        load_calibration({"data": "d.csv"}, tmp_path, "p.yaml")
    with pytest.raises(ValueError, match="unusable"):
        load_calibration(block | {"data": "absent.csv"}, tmp_path, "p.yaml")
