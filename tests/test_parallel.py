"""Tensor vs expert parallel routed-expert time on hand-built routing (skipbench.speed.parallel)."""

from __future__ import annotations

import numpy as np
import pytest

from skipbench.speed.costmodel import CostModel
from skipbench.speed.parallel import device_loads, parallel_routed_ms, parallel_speedups, synthetic_deepseek_routing


def routing(ids, kept):
    """Two sequences decoded together for one step at one layer: rows (sample, position 1)."""
    ids, kept = np.asarray(ids), np.asarray(kept, bool)
    n = len(ids)
    return dict(sample=np.arange(n), position=np.ones(n, np.int64), layer=np.zeros(n, np.int64), ids=ids,
                kept=kept, weights=np.ones(ids.shape, np.float32))  # fmt: skip


# E = 4 experts on 2 devices: 0, 1 on device 0; 2, 3 on device 1. Both tokens pick experts 0, 1, 2.
IDS = [[0, 1, 2], [0, 1, 2]]
DENSE = routing(IDS, [[1, 1, 1], [1, 1, 1]])
SKIP_IDLE = routing(IDS, [[1, 1, 0], [1, 1, 0]])  # drops expert 2: device 1 was not the busiest
SKIP_BUSY = routing(IDS, [[1, 0, 1], [1, 0, 1]])  # drops expert 1: the busiest device loses one


def test_device_loads_count_each_devices_experts():
    loads = device_loads(DENSE, 2, n_devices=2, n_experts=4).set_index("device")
    assert loads.loc[0, "distinct"] == 2 and loads.loc[1, "distinct"] == 1
    assert loads.loc[0, "slots"] == 4 and loads.loc[1, "slots"] == 2
    with pytest.raises(ValueError, match="evenly"):
        device_loads(DENSE, 2, n_devices=3, n_experts=4)


def test_ep_waits_for_the_busiest_device():
    floor = dict(n_devices=2, n_experts=4, expert_bytes=1e9, pair_flops=0.0, cost=None, bandwidth=1e12, rate=1e15)
    dense = parallel_routed_ms(DENSE, 2, **floor)
    assert dense["ep_ms"] == pytest.approx(2.0)  # device 0: 2 experts x 1 GB at 1 TB/s
    assert dense["tp_ms"] == pytest.approx(1.5)  # 3 experts, half of each on every device
    idle, busy = parallel_routed_ms(SKIP_IDLE, 2, **floor), parallel_routed_ms(SKIP_BUSY, 2, **floor)
    assert idle["ep_ms"] == pytest.approx(2.0)  # a skip off the busiest device saves nothing under EP
    assert idle["tp_ms"] == pytest.approx(1.0)  # ... but saves a third under TP
    assert busy["ep_ms"] == pytest.approx(1.0) and busy["ep_busiest_distinct"] == 1


def test_speedups_and_calibrated_launch_cost():
    cost = CostModel(layer_ms=0.5, expert_ms=0.0, bandwidth=1e12, rate=float("inf"), source="t", points=3,
                     max_abs_error=0.0)  # fmt: skip
    t = parallel_speedups({"dense": DENSE, "skip_busy": SKIP_BUSY}, [2], 2, 4, 1e9, 0.0, cost, 1e12, 1e15)
    ep = t[t["layout"] == "ep"].set_index("variant")
    assert ep.loc["skip_busy", "speedup"] == pytest.approx((0.5 + 2.0) / (0.5 + 1.0))  # launch paid once per step


def test_synthetic_deepseek_routing_respects_groups():
    r = synthetic_deepseek_routing(2, 3, 1, keep_k=2, seed=1)
    assert r["ids"].shape == (6, 8) and r["kept"].sum(axis=1).tolist() == [2] * 6
    groups = r["ids"] // 32
    assert all(len(np.unique(g)) <= 4 for g in groups)  # top-8 within 4 of the 8 groups
    assert (np.diff(r["weights"], axis=1) <= 0).all()  # slot order: highest score first (no bias)
    assert r["kept"][:, :2].all() and not r["kept"][:, 2:].any()  # router_topk 2: the two best slots
