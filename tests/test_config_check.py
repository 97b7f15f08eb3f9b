"""Config mistakes are rejected before compute, naming field, value and what is allowed."""

import json

import pytest

from skipbench.config_check import (
    STRATEGY_CHECKS, ConfigError, RoutingShape, check_benchmarks, check_calibration, check_samples_file,
    check_unique_keys, check_variants, check_variants_against_checkpoint,
)

# The embedded default's routing: 16 experts top-4 in 4 groups (keep 2), layers 1-3 MoE.
TINY = RoutingShape(experts=16, top_k=4, groups=4, topk_group=2, moe_layers=(1, 2, 3), scoring="sigmoid")


@pytest.mark.parametrize("variant, needle", [
    ({"strategy": "topk", "k": 8}, "variants.v.k = 8: at most 4"),
    ({"strategy": "layers", "layers": [99]}, "variants.v.layers = [99]: [99] are not MoE layers; allowed 1..3"),
    ({"strategy": "layers", "layers": [0, 2]}, "[0] are not MoE layers"),
    ({"strategy": "layers", "cheapest": 5}, "variants.v.cheapest = 5: at most 3"),
    ({"strategy": "group", "topk_group": 9}, "variants.v.topk_group = 9: at most 4"),
    ({"strategy": "batch_aware", "k0": 5}, "variants.v.k0 = 5: at most 4"),
])
def test_strategy_parameters_that_do_not_fit_the_model_are_named(variant, needle):
    with pytest.raises(ConfigError) as err:
        check_variants({"v": variant}, TINY)
    assert needle in str(err.value)


def test_fitting_parameters_pass_and_every_error_is_listed():
    check_variants({"a": {"strategy": "topk", "k": 4}, "b": {"strategy": "layers", "layers": [1, 3]},
                    "c": {"strategy": "group", "topk_group": 1}, "d": {"strategy": "threshold", "beta": 0.3},
                    "e": {"strategy": "dense"}}, TINY)
    with pytest.raises(ConfigError) as err:
        check_variants({"a": {"strategy": "topk", "k": 8}, "b": {"strategy": "group", "topk_group": 9}}, TINY)
    assert "variants.a.k" in str(err.value) and "variants.b.topk_group" in str(err.value)
    assert {"topk", "group", "layers", "batch_aware"} <= set(STRATEGY_CHECKS)


def test_downloaded_checkpoint_shape_read_from_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
        "num_hidden_layers": 61, "first_k_dense_replace": 3}))
    check_variants_against_checkpoint({"v": {"strategy": "topk", "k": 8}}, tmp_path)
    with pytest.raises(ConfigError, match="layers = \\[1\\]: \\[1\\] are not MoE layers; allowed 3..60"):
        check_variants_against_checkpoint({"v": {"strategy": "layers", "layers": [1]}}, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({  # another family's field names
        "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 32}))
    with pytest.raises(ConfigError, match="variants.v.k = 3: at most 2"):
        check_variants_against_checkpoint({"v": {"strategy": "topk", "k": 3}}, tmp_path)


def test_duplicate_keys_are_rejected_with_file_and_line(tmp_path):
    ok, dup = tmp_path / "ok.yaml", tmp_path / "dup.yaml"
    ok.write_text("variants:\n  a: {strategy: dense}\n  b: {strategy: dense}\n")
    dup.write_text("variants:\n  a: {strategy: dense}\n  a: {strategy: topk, k: 1}\n")
    check_unique_keys([ok])
    with pytest.raises(ConfigError, match=r"dup.yaml:3: duplicate key 'a' \(first at line 2\)"):
        check_unique_keys([ok, dup])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        check_unique_keys([bad])


def test_humaneval_path_is_honoured(tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(ConfigError, match=r"benchmarks.he .*nowhere.jsonl"):
        check_benchmarks({"he": {"dataset": "humaneval", "tasks": 2, "path": str(missing)}})
    other = tmp_path / "other.jsonl"
    other.write_text('{"task_id": "x"}\n')
    with pytest.raises(ConfigError, match="sha256"):  # read, then refused: not the pinned file
        check_benchmarks({"he": {"dataset": "humaneval", "tasks": 1, "path": str(other)}})
    assert check_benchmarks({"he": {"dataset": "humaneval", "tasks": 2}}) == {"he": {"HumanEval/0", "HumanEval/1"}}


def test_calibration_overlap_unknown_and_too_many_are_rejected():
    benches = {"he": {"dataset": "humaneval", "tasks": 10}}
    check_calibration({"dataset": "humaneval", "tasks": 4}, benches)
    with pytest.raises(ConfigError, match="HumanEval/3.*held out"):
        check_calibration({"dataset": "humaneval", "tasks": ["HumanEval/3"]}, benches)
    with pytest.raises(ConfigError, match=r"calibration.tasks .*\['HumanEval/999'\] are not tasks of humaneval"):
        check_calibration({"dataset": "humaneval", "tasks": ["HumanEval/20", "HumanEval/999"]}, benches)
    with pytest.raises(ConfigError, match="calibration .*wants 1000 tasks"):
        check_calibration({"dataset": "humaneval", "tasks": 1000}, benches)


def test_external_samples_validated_per_line(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join([
        json.dumps({"task_id": "T/0", "solution": "def f(): pass"}),
        json.dumps({"task_id": "T/0", "solution": 42}),
        "{torn",
        json.dumps(["not", "an", "object"]),
        json.dumps({"task_id": "T/9", "completion": "x"}),
        json.dumps({"task_id": "T/0"}),
        json.dumps({"task_id": "T/0", "solution": "x", "sample_id": 0}),  # as execute checks: main planned it
        "",
    ]) + "\n")
    with pytest.raises(ConfigError) as err:
        check_samples_file(f, {"T/0"}, "benchmarks.b")
    msg = str(err.value)
    assert msg.startswith("benchmarks.b.samples: bad lines")
    assert f"{f}:2: solution of T/0 must be a string, not int" in msg
    assert f"{f}:3: not JSON" in msg and f"{f}:4: a list, not a JSON object" in msg
    assert f"{f}:5: task T/9 is not among the selected benchmarks.b tasks" in msg
    assert f"{f}:6: sample of T/0 has neither solution nor completion" in msg and f"{f}:1:" not in msg
    assert f"{f}:7: sample 0 of T/0 already given on line 1" in msg
    with pytest.raises(ConfigError, match="cannot read it"):
        check_samples_file(tmp_path / "missing.jsonl", {"T/0"}, "benchmarks.b")
    f.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read it"):
        check_samples_file(f, {"T/0"}, "benchmarks.b")


def test_datasets_not_downloaded_yet_are_checked_later_and_planning_stays_offline(tmp_path, monkeypatch):
    import evalplus.data.utils

    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.setattr(evalplus.data.utils, "get_dataset_metadata",
                        lambda *a, **k: ("https://unreachable", str(tmp_path / "not-cached.jsonl")))
    assert check_benchmarks({"hp": {"dataset": "humaneval_plus"}}) == {"hp": None}
    f = tmp_path / "s.jsonl"
    f.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": 3, "completion": "x"}\n')
    with pytest.raises(ConfigError, match=r"s.jsonl:2: task_id must be a string, not int") as err:
        check_samples_file(f, None, "benchmarks.hp")
    assert ":1:" not in str(err.value)


def test_new_strategies_are_checked_against_the_routing_shape():
    from skipbench.config_check import ConfigError, RoutingShape, check_variants

    shape = RoutingShape(16, 4, 4, 2, (1, 2, 3), "sigmoid")
    check_variants({"a": {"strategy": "router_topk", "k": 4}, "b": {"strategy": "entropy_k", "thresholds": [0.2, 0.5, 0.8]}},
                   shape)  # fmt: skip
    with pytest.raises(ConfigError, match=r"variants.r.k = 5: at most 4"):
        check_variants({"r": {"strategy": "router_topk", "k": 5}}, shape)
    with pytest.raises(ConfigError, match=r"variants.e.thresholds = .*at most 3 cut points"):
        check_variants({"e": {"strategy": "entropy_k", "thresholds": [0.1, 0.2, 0.3, 0.4]}}, shape)


def test_a_generating_synthetic_model_needs_its_architecture():
    from skipbench.config_check import synthetic_shape

    with pytest.raises(ConfigError, match="model.synthetic.architecture: n_routed_experts is missing"):
        synthetic_shape({})
