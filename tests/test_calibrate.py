"""Calibration: held-out task selection, statistics on a tiny model, binding into rules."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from skipbench.benchmarks.tasks import load_tasks
from skipbench.infer.calibrate import CALIBRATION_SCHEMA, bind_calibration, calibration_tasks, run_calibration
from skipbench.skip.routing import LayerRule
from skipbench.skip.strategies import SkipRule
from tiny_models import write_tiny_dsv3

BENCHMARKS = {"humaneval": {"dataset": "humaneval", "tasks": 10}}
CALIBRATION = {"dataset": "humaneval", "tasks": ["HumanEval/15", "HumanEval/45"]}  # short texts: a fast test


def test_calibration_tasks_are_disjoint_from_every_evaluated_task():
    bench = BENCHMARKS | {"he_plus_subset": {"dataset": "humaneval", "tasks": ["HumanEval/12", "HumanEval/40"]}}
    tasks = calibration_tasks({"dataset": "humaneval", "tasks": 16}, bench)
    ids = [t.task_id for t in tasks]
    assert len(ids) == 16 and len(set(ids)) == 16
    evaluated = {f"HumanEval/{i}" for i in range(10)} | {"HumanEval/12", "HumanEval/40"}
    assert not set(ids) & evaluated
    assert ids[:3] == ["HumanEval/10", "HumanEval/11", "HumanEval/13"]  # first tasks not evaluated
    with pytest.raises(ValueError, match="held out"):
        calibration_tasks({"dataset": "humaneval", "tasks": ["HumanEval/3", "HumanEval/50"]}, BENCHMARKS)
    with pytest.raises(ValueError, match="only"):
        calibration_tasks({"dataset": "humaneval", "tasks": 160}, BENCHMARKS)


def test_default_config_calibration_is_held_out():
    cfg = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    tasks = calibration_tasks(cfg.get("calibration", {}), cfg["benchmarks"])
    evaluated = {t.task_id for b in cfg["benchmarks"].values() for t in load_tasks(b)}
    assert tasks and not {t.task_id for t in tasks} & evaluated


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_dsv3(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def table(tmp_path_factory, tiny_model_dir):
    model = tiny_model_dir
    tasks = calibration_tasks(CALIBRATION, BENCHMARKS)
    out = tmp_path_factory.mktemp("cal") / "calibration.parquet"
    run_calibration(model, tasks, out, max_tokens=512)  # solutions included: MoDES reads their tokens
    return pq.read_table(out)


def test_statistics(table):
    assert table.schema.equals(CALIBRATION_SCHEMA)
    rows = table.to_pylist()
    assert [r["layer"] for r in rows] == [1, 2]  # the tiny model's MoE layers
    for r in rows:
        assert r["tokens"] > 50 and r["experts"] == 16 and r["slots"] == 4 and r["texts"] == 2
        assert sum(r["frequency"]) == pytest.approx(4.0)  # K experts per token
        assert r["ratio_median"][0] == 1.0 and all(a >= b for a, b in zip(r["ratio_median"], r["ratio_median"][1:]))
        assert all(s >= 0 for s in r["saliency"]) and any(s > 0 for s in r["saliency"])
        assert all(s == 0 for s, f in zip(r["saliency"], r["frequency"]) if f == 0)
        assert r["routed_norm"] > 0 and r["relative_update"] > 0
        qs = r["entropy_quantiles"]
        assert len(qs) == 101 and 0 < qs[0] <= qs[50] <= qs[100] <= 1 and qs[0] < qs[100]
    assert sum(r["modes_importance"] for r in rows) == pytest.approx(1.0)  # MoDES: normalised over layers
    assert all(r["modes_importance"] > 0 for r in rows)


def test_modes_importance_is_the_kl_of_skipping_each_layer(table, tiny_model_dir):
    """Recomputed independently: the dense model vs the model whose routed experts are off in
    one layer (the `layers` strategy), KL(dense || skipped) over the solution's positions,
    summed over texts, normalised over layers (ModelTC/MoDES get_layer_importance_ddp.py)."""
    from transformers import AutoTokenizer

    from skipbench.infer.oracle import load_oracle

    tasks = calibration_tasks(CALIBRATION, BENCHMARKS)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    kl = {}
    dense, _ = load_oracle(tiny_model_dir, SkipRule("dense"))
    for layer in (1, 2):
        model, _ = load_oracle(tiny_model_dir, SkipRule("layers", layers=(layer,)))
        total = 0.0
        for t in tasks:
            ids = tok(t.prompt + t.canonical_solution, return_tensors="pt")["input_ids"][:, :512]
            n = len(tok(t.prompt)["input_ids"])
            with torch.no_grad():
                p = dense(ids).logits[0, n:].double().log_softmax(-1)
                q = model(ids).logits[0, n:].double().log_softmax(-1)
            total += float((p.exp() * (p - q)).sum())
        kl[layer] = total
    got = {r["layer"]: r["modes_importance"] for r in table.to_pylist()}
    assert got == pytest.approx({l: v / sum(kl.values()) for l, v in kl.items()}, rel=1e-4)


def test_bind_calibration(table):
    rows = {r["layer"]: r for r in table.to_pylist()}
    rule = bind_calibration(SkipRule("threshold", beta="calibrated"), table)
    assert rule.layer_beta == {l: r["ratio_median"][1] for l, r in rows.items()}  # NAEE: median w2/w1
    rule = bind_calibration(SkipRule("layers", cheapest=1), table)
    assert rule.layers == (min(rows, key=lambda l: rows[l]["relative_update"]),)
    for criterion, key in (("frequency", "frequency"), ("reap", "saliency")):
        rule = bind_calibration(SkipRule("prune", fraction=0.25, criterion=criterion), table)
        for layer, removed in rule.pruned.items():
            assert len(removed) == 4
            kept = [e for e in range(16) if e not in removed]
            assert max(rows[layer][key][e] for e in removed) <= min(rows[layer][key][e] for e in kept)
        assert rule.is_calibrated and SkipRule.from_config(json.loads(rule.to_json())) == rule
    assert bind_calibration(SkipRule("prune", fraction=0.0, criterion="reap"), table).pruned == {1: (), 2: ()}
    rule = bind_calibration(SkipRule("modes", tau=0.05), table)  # MoDES: KL importance, sum 1
    assert rule.layer_importance == {l: r["modes_importance"] for l, r in rows.items()} and rule.is_calibrated
    rule = bind_calibration(SkipRule("entropy_k", quantiles=(0.3, 0.7)), table)
    assert rule.is_calibrated and all(a <= b for a, b in rule.layer_thresholds.values())
    rule = bind_calibration(SkipRule("modulated", tau=0.1), table)  # our ablation: relative update, mean 1
    mean = sum(r["relative_update"] for r in rows.values()) / len(rows)
    assert rule.layer_importance == pytest.approx({l: r["relative_update"] / mean for l, r in rows.items()})
    assert rule.is_calibrated and SkipRule.from_config(json.loads(rule.to_json())) == rule
    with pytest.raises(ValueError, match="calibration"):
        bind_calibration(SkipRule("layers", cheapest=1), None)
    assert bind_calibration(SkipRule("topk", k=2), None) == SkipRule("topk", k=2)


def _task(tid, prompt, solution="    return x\n"):
    from skipbench.benchmarks.tasks import Task

    return Task(task_id=tid, prompt=prompt, entry_point="f", canonical_solution=solution)


EVAL = _task("E/0", 'def f(x):\n    """Return x, unchanged.\n\n    >>> f(1)\n    1\n    """\n')
NEAR_COPY = _task("C/9", 'def f(x):  # same task\n  """Return x,\n  unchanged.\n\n  >>> f(1)\n  1\n  """\n')
OTHER = _task("C/1", "def g(items):\n    '''Sort the items in reverse order and drop duplicates.'''\n",
              "    return sorted(set(items), reverse=True)\n")


def fake_datasets(monkeypatch, datasets):
    """load_tasks(cfg) -> datasets[cfg['dataset']] (whole dataset, or the first `tasks` ids)."""
    import skipbench.infer.calibrate as cal

    def load(cfg):
        pool = datasets[cfg["dataset"]]
        n = cfg.get("tasks")
        return pool[:n] if isinstance(n, int) else pool

    monkeypatch.setattr(cal, "load_tasks", load)


def test_normalised_text_and_near_duplicates():
    from skipbench.benchmarks.disjoint import EvaluatedTexts, normalise

    # comments, indentation and docstring wrapping do not matter
    assert normalise(EVAL.prompt) == normalise(NEAR_COPY.prompt)
    assert normalise("x = 1  # one\n\n\ny =  2\n") == normalise("x = 1\ny = 2")
    assert normalise("not python ( at all # c\n  text") == "not python ( at all text"  # fallback path
    ev = EvaluatedTexts([("E/0", EVAL.prompt)])
    assert ev.clash(NEAR_COPY.prompt) == ("E/0", 1.0)
    assert ev.clash(OTHER.prompt) is None
    # one changed word in a long prompt is still a near duplicate
    long = "def h(a, b):\n    '''" + " ".join(f"word{i}" for i in range(60)) + "'''\n"
    label, sim = EvaluatedTexts([("L", long)]).clash(long.replace("word30", "other"))
    assert label == "L" and 0.8 <= sim < 1


def test_calibration_rejects_near_duplicates_across_datasets_and_names_the_task(monkeypatch):
    fake_datasets(monkeypatch, {"mbpp_plus": [EVAL], "humaneval": [NEAR_COPY, OTHER]})
    bench = {"mbpp": {"dataset": "mbpp_plus", "tasks": 1}}
    # a count skips the near duplicate found in ANOTHER dataset (HumanEval vs MBPP+)
    assert [t.task_id for t in calibration_tasks({"dataset": "humaneval", "tasks": 1}, bench)] == ["C/1"]
    with pytest.raises(ValueError, match=r"'C/9' duplicates evaluated task E/0 \(benchmark 'mbpp'\)"):
        calibration_tasks({"dataset": "humaneval", "tasks": ["C/9"]}, bench)
    with pytest.raises(ValueError, match=r"only 1 are held out"):
        calibration_tasks({"dataset": "humaneval", "tasks": 2}, bench)
    with pytest.raises(ValueError, match=r"more than once: \['C/1'\]"):
        calibration_tasks({"dataset": "humaneval", "tasks": ["C/1", "C/1"]}, bench)
    with pytest.raises(ValueError, match=r"calibration task 'C/404' is not in dataset 'humaneval'"):
        calibration_tasks({"dataset": "humaneval", "tasks": ["C/404"]}, bench)
    fake_datasets(monkeypatch, {"mbpp_plus": [EVAL], "humaneval": [OTHER, OTHER]})
    with pytest.raises(ValueError, match=r"calibration dataset 'humaneval' lists task ids more than once"):
        calibration_tasks({"dataset": "humaneval", "tasks": 1}, bench)
