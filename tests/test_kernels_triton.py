"""Triton MoE kernels (kernels/moe_triton.py) against the float64 reference.

Without CUDA they run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1) at
tiny shapes; the gpu-marked tests run DeepSeek-V3's real hidden/intermediate sizes.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the jit decorators below
pytest.importorskip("triton")

from skipbench_kernels import moe_triton as mt  # noqa: E402
from skipbench_kernels.layout import stack_shared_expert, with_shared_expert  # noqa: E402
from skipbench_kernels.reference import moe_reference, quant_blocks  # noqa: E402
from skipbench.kernel_build import TOLERANCE  # noqa: E402

if not CUDA and not mt.UPCAST_DOT:
    pytest.skip("kernels were jitted before TRITON_INTERPRET was set", allow_module_level=True)

DEV = "cuda" if CUDA else "cpu"
TINY = mt.MoeConfig(16, mt.GemmConfig(32, 128), mt.GemmConfig(64, 128))


def _case(kind, t=24, h=256, i=128, e=6, k=3, p_keep=0.7, seed=0, device=DEV):
    """x, w13, w2, ids, weights, keep and scales ({} unless fp8) for one random routed step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g)
    w13 = torch.randn(e, 2 * i, h, generator=g) / h**0.5
    w2 = torch.randn(e, h, i, generator=g) / i**0.5
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
    w = torch.rand(t, k, generator=g)
    keep = torch.rand(t, k, generator=g) < p_keep
    scales = {}
    if kind == "fp8":
        (w13, s13), (w2, s2) = quant_blocks(w13), quant_blocks(w2)
        scales = {"w13_scale": s13.to(device), "w2_scale": s2.to(device)}
    elif kind == "bf16":
        x, w13, w2 = x.bfloat16(), w13.bfloat16(), w2.bfloat16()
    return [a.to(device) for a in (x, w13, w2, ids, w, keep)], scales


def _rel_err(out, ref):
    return float((out.double() - ref).abs().max() / ref.abs().max())


def _ref64(args, scales, kind):
    return moe_reference(*args, **scales, quantize_activations=kind == "fp8", compute_dtype=torch.float64)


@pytest.mark.parametrize("kind", ["fp32", "bf16", "fp8"])
def test_kernel_matches_float64_reference_under_a_skip_mask(kind):
    args, scales = _case(kind)
    out = mt.moe_triton(*args, **scales, config=TINY)
    assert out.dtype == args[0].dtype and out.shape == args[0].shape
    assert _rel_err(out, _ref64(args, scales, kind)) < TOLERANCE[kind]


def test_fp8_kernel_quantises_activations_exactly_like_the_reference():
    # Same 1x128 scales and e4m3 rounding as act_quant: only fp32 summation order differs.
    args, scales = _case("fp8", seed=3)
    assert _rel_err(mt.moe_triton(*args, **scales, config=TINY), _ref64(args, scales, "fp8")) < 1e-4


@pytest.mark.parametrize("config", [mt.MoeConfig(16, mt.GemmConfig(64, 64), mt.GemmConfig(32, 128)),
                                    mt.MoeConfig(32, mt.GemmConfig(128, 128), mt.GemmConfig(128, 64))])
def test_tile_configs_agree(config):
    args, scales = _case("fp32", seed=1)
    torch.testing.assert_close(mt.moe_triton(*args, config=config), mt.moe_triton(*args, config=TINY))


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_skipping_equals_weight_zero(kind):
    (x, w13, w2, ids, w, keep), scales = _case(kind, seed=2)
    skipped = mt.moe_triton(x, w13, w2, ids, w, keep, **scales, config=TINY)
    zeroed = mt.moe_triton(x, w13, w2, ids, w * keep, None, **scales, config=TINY)
    torch.testing.assert_close(skipped.float(), zeroed.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the interpreter reducing the live-poison run
@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_skipped_and_unrouted_experts_are_never_read(kind):
    """NaN weights in every expert without a kept slot leave the output untouched:
    their blocks exit before loading (0 * NaN would be NaN)."""
    (x, w13, w2, _, w, _), scales = _case(kind, t=4, e=8, k=2, seed=4)
    ids = torch.tensor([[0, 1], [2, 3], [0, 4], [5, 2]], device=DEV)
    keep = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=torch.bool, device=DEV)
    clean = mt.moe_triton(x, w13, w2, ids, w, keep, **scales, config=TINY)
    idle = torch.tensor([0, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool, device=DEV)  # 1 routed but skipped; 6, 7 unrouted
    nan = torch.tensor(float("nan"), device=DEV)
    w13 = torch.where(idle[:, None, None], nan, w13.float()).to(w13.dtype)  # e4m3fn has a NaN
    w2 = torch.where(idle[:, None, None], nan, w2.float()).to(w2.dtype)
    scales = {n: s.clone().index_fill_(0, idle.nonzero().flatten(), float("nan")) for n, s in scales.items()}
    poisoned = mt.moe_triton(x, w13, w2, ids, w, keep, **scales, config=TINY)
    assert torch.isfinite(poisoned.float()).all()
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)
    # the poison is live: computing the skipped slot of expert 1 does reach the output
    assert torch.isnan(mt.moe_triton(x, w13, w2, ids, w, None, **scales, config=TINY).float()).any()


def test_all_slots_skipped_gives_zero():
    (x, w13, w2, ids, w, keep), _ = _case("fp32", t=3)
    out = mt.moe_triton(x, w13, w2, ids, w, torch.zeros_like(keep), config=TINY)
    assert torch.all(out == 0)


def test_shared_expert_rides_along():
    (x, w13, w2, ids, w, keep), _ = _case("fp32", t=8, seed=5)
    g = torch.Generator().manual_seed(9)
    s13, s2 = torch.randn(*w13.shape[1:], generator=g) / 16, torch.randn(*w2.shape[1:], generator=g) / 11
    gate, up = (x.double() @ s13.double().T).chunk(2, -1)
    shared = (torch.nn.functional.silu(gate) * up) @ s2.double().T
    routed = moe_reference(x, w13, w2, ids, w, keep, compute_dtype=torch.float64)
    out = mt.moe_triton(x, stack_shared_expert(w13, s13), stack_shared_expert(w2, s2),
                        *with_shared_expert(ids, w, keep, shared_id=w13.shape[0]), config=TINY)
    assert _rel_err(out, routed + shared) < 1e-5


def test_config_round_trips_and_bad_shapes_are_refused():
    assert mt.MoeConfig.from_json(TINY.to_json()) == TINY
    args, scales = _case("fp8", t=2)
    with pytest.raises(ValueError, match="block_k"):
        mt.moe_triton(*args, **scales, config=mt.MoeConfig(16, mt.GemmConfig(32, 256), TINY.down))
    with pytest.raises(ValueError, match="FP8 needs"):
        mt.moe_triton(*args, config=TINY)  # fp8 weights without scales


# DeepSeek-V3: hidden 7168, expert intermediate 2048, top-8; a 16-expert slice of the 256.
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["bf16", "fp8"])
@pytest.mark.parametrize("tokens", [1, 64])
def test_deepseek_v3_shapes_on_gpu(kind, tokens):
    args, scales = _case(kind, t=tokens, h=7168, i=2048, e=16, k=8, p_keep=0.6)
    out = mt.moe_triton(*args, **scales, config=mt.DEFAULT_CONFIG)
    assert _rel_err(out, _ref64(args, scales, kind)) < TOLERANCE[kind]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_layout_and_kernels_capture_in_a_cuda_graph():
    """Capture fails on any host sync: the whole skip-aware MoE step has none."""
    args, scales = _case("fp8", t=16, h=7168, i=2048, e=16, k=8)
    expect = mt.moe_triton(*args, **scales)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mt.moe_triton(*args, **scales)
    graph.replay()
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
