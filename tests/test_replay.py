"""The measured replay (skipbench/speed/replay.py, replay_fit.py): steps it times, rows it writes."""

import numpy as np
import pandas as pd
import pytest

from skipbench.io import read_table
from skipbench.speed.replay import (REPLAY_SCHEMA, CpuEagerPath, ExpertShape, add_speedup, not_run_rows, replay_table,
                              sampled_steps)
from skipbench.speed.replay_fit import FIT_SCHEMA, fit_from_rows, held_out_error, run_fit, run_replay
from skipbench.skip.strategies import SkipRule
from skipbench.speed.traffic import replay_rows, step_traffic, trace_arrays

E, K, LAYERS = 16, 4, (1, 2, 3)
TINY = ExpertShape(64, 32)


def synthetic_trace(keep: int, samples: int = 6, tokens: int = 12, seed: int = 0, layers=LAYERS) -> pd.DataFrame:
    """A routing trace as the inference stage writes it: K distinct experts per (token, layer)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(samples):
        for pos in range(tokens - s % 3):  # unequal lengths: the refill schedule matters
            for layer in layers:
                ids = rng.choice(E, K, replace=False).tolist()
                w = np.sort(rng.dirichlet(np.ones(K)))[::-1].tolist()
                rows.append(dict(task_id=f"HumanEval/{s}", sample_id=0, position=pos, layer=layer, expert_ids=ids,
                                 keep=keep, weights=w))
    return pd.DataFrame(rows)


def test_sampled_steps_are_the_replays_steps():
    arrays = trace_arrays(synthetic_trace(0b1111))
    for c in (1, 4):
        rows = replay_rows(arrays, c)
        counted = step_traffic(arrays, c).set_index(["step", "layer"])
        steps = sampled_steps(rows, 3)
        assert len(steps) == 3 and all(len(s) == len(LAYERS) for s in steps)
        picked = np.unique(rows["step"])[[0, len(np.unique(rows["step"])) // 2, -1]]
        for s, step in zip(picked, steps):
            for layer, (ids, _, kept) in zip(LAYERS, step):
                assert len(ids) == c  # constant load: c tokens every step
                assert len(np.unique(ids[kept])) == counted.loc[(s, layer), "distinct"]


def test_batch_aware_recomputed_in_the_timed_steps():
    arrays = trace_arrays(synthetic_trace(0b1111))
    one = sampled_steps(replay_rows(arrays, 1, SkipRule("batch_aware", k0=1)), 2)
    assert all(kept.sum() == 1 for step in one for _, _, kept in step)  # c = 1: top-k0
    four = sampled_steps(replay_rows(arrays, 4, SkipRule("batch_aware", k0=1)), 2)
    assert all(kept.sum() >= 4 for step in four for _, _, kept in step)


def test_expert_shape_parse_bounds_untrusted_input():
    assert ExpertShape.parse(None, 256, 128, "float32") == ExpertShape(256, 128)
    assert ExpertShape.parse("2048x1408", 256, 128, "float32").label == "2048x1408 float32"
    for bad in ("2048", "x", "-1x3", "1e9x2", "99999999x2", "2048x1408x3"):
        with pytest.raises(ValueError):
            ExpertShape.parse(bad, 256, 128, "float32")


def test_replay_table_speedup_and_schema(tmp_path):
    traces = {"dense": synthetic_trace(0b1111), "rtop1": synthetic_trace(0b0001)}
    path = CpuEagerPath(TINY, E, 4)
    table = add_speedup(replay_table(path, traces, {}, [1, 4], TINY, "cpu:test", n_steps=2, repeats=2))
    assert len(table) == 4 and (table["status"] == "measured").all()
    dense = table[table["variant"] == "dense"]
    assert (dense["speedup"] == 1.0).all() and (dense["pairs"] == dense["concurrency"] * K).all()
    rtop1 = table[table["variant"] == "rtop1"].set_index("concurrency")
    assert rtop1.loc[1, "distinct_experts"] == 1 and rtop1.loc[1, "pairs"] == 1
    assert (table["ms_per_step"] > 0).all() and (table["layers"] == len(LAYERS)).all()
    gpu = not_run_rows(["dense"], [1], ["grouped_mm"], "cpu:test", TINY, "no CUDA device")
    assert gpu["status"].iloc[0] == "not run: no CUDA device"


def test_fit_then_replay_predicts_held_out_variants(tmp_path):
    paths = {}
    for v, keep in (("dense", 0b1111), ("rtop2", 0b0011), ("rtop1", 0b0001)):
        synthetic_trace(keep).to_parquet(paths.setdefault(v, str(tmp_path / f"{v}.parquet")))
    fit = run_fit(paths["dense"], E, [1, 4], TINY, str(tmp_path / "fit.parquet"), steps=2, repeats=2, copy_mib=8)
    assert fit.schema.equals(FIT_SCHEMA, check_metadata=False)
    assert sorted(set(fit.column("variant").to_pylist())) == ["dense", "top1"]
    out = tmp_path / "replay.parquet"
    run_replay(paths, {}, E, [1, 4], TINY, str(tmp_path / "fit.parquet"), str(out), steps=2, repeats=2)
    table = read_table(out, REPLAY_SCHEMA).to_pandas()
    cpu = table[table["path"] == "cpu_eager"]
    assert cpu["predicted_ms"].notna().all() and (cpu["held_out"] == (cpu["variant"] != "dense")).all()
    assert set(held_out_error(table)["path"]) == {"cpu_eager"}
    # the fit depends only on the fit rows: the same rows give the same model
    f = fit.to_pandas()
    assert fit_from_rows(f, TINY) == fit_from_rows(f.copy(), TINY)


@pytest.mark.slow  # the interpreter: ~10 s
def test_gpu_paths_on_the_same_steps_under_the_interpreter():
    """The CUDA paths' plumbing, on CPU tensors (Triton's interpreter): same routing, same
    output as the CPU loop's contract (skipped slots are never computed)."""
    pytest.importorskip("triton")
    import torch

    from skipbench.speed.replay_gpu import gpu_paths

    if torch.cuda.is_available():
        pytest.skip("covered by the device check on a GPU")
    shape = ExpertShape(256, 128, "bfloat16")
    traces = {v: synthetic_trace(keep, samples=1, tokens=2, layers=(1,)) for v, keep in (("dense", 0b1111), ("rtop1", 1))}
    for path in gpu_paths(shape, E, 1, device="cpu"):
        table = add_speedup(replay_table(path, traces, {}, [1], shape, "cpu:test", n_steps=1, repeats=1))
        assert (table["status"] == "measured").all() and (table["ms_per_step"] > 0).all(), path.name
        assert set(table["path"]) == {path.name}


def test_report_shows_the_replay_as_measured_with_device_path_and_width():
    from skipbench.report.figures import MEASURED, REPLAYED, speedup_at, speedup_columns
    from skipbench.report.summary import RunTables

    table = add_speedup(pd.DataFrame([dict(variant=v, concurrency=1, path="cpu_eager", device="cpu:x", ms_per_step=t,
                                           expert_shape="2048x1408 float32", status="measured")
                                      for v, t in (("dense", 6.0), ("rtop1", 2.0))]))
    run = RunTables("tiny", scores=pd.DataFrame(), replay={"he": table})
    assert speedup_columns([run], []) == [MEASURED, REPLAYED]
    speedup, source = speedup_at(run, REPLAYED, 1)
    assert speedup["rtop1"] == 3.0 and speedup["dense"] == 1.0
    assert source == "measured (routed experts, replayed on cpu:x cpu_eager, experts 2048x1408 float32)"
    assert speedup_columns([RunTables("tiny", scores=pd.DataFrame())], []) == [MEASURED]
