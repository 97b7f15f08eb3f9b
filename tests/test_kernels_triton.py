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
from skipbench.model.kernel_build import TOLERANCE  # noqa: E402

if not CUDA and not mt.UPCAST_DOT:
    pytest.skip("kernels were jitted before TRITON_INTERPRET was set", allow_module_level=True)

DEV = "cuda" if CUDA else "cpu"
TINY = mt.MoeConfig(16, mt.GemmConfig(128, 128, 4, 1), mt.GemmConfig(64, 128, 4, 1))  # 1 stage: fp32 tiles fit


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


def test_fp8_tensor_parallel_shards_sum_to_the_whole_layer():
    """Each of 2 ranks holds I/2 of every expert (gate, up rows and down columns, with their
    128x128 scale blocks): the ranks' outputs sum to the float64 reference of the layer."""
    args, scales = _case("fp8", t=6, i=256, e=4, k=2, seed=7)
    x, w13, w2, ids, w, keep = args
    i, half = w2.shape[2], w2.shape[2] // 2
    out = torch.zeros(x.shape, dtype=torch.float64, device=DEV)
    for r in range(2):
        rows = torch.cat([torch.arange(r * half, (r + 1) * half), i + torch.arange(r * half, (r + 1) * half)]).to(DEV)
        s_rows = rows[::128] // 128
        out += mt.moe_triton(x, w13[:, rows].contiguous(), w2[:, :, r * half:(r + 1) * half].contiguous(), ids, w, keep,
                             w13_scale=scales["w13_scale"][:, s_rows].contiguous(),
                             w2_scale=scales["w2_scale"][:, :, r * half // 128:(r + 1) * half // 128].contiguous(),
                             config=TINY).double()  # fmt: skip
    assert _rel_err(out, _ref64(args, scales, "fp8")) < 1e-4


@pytest.mark.parametrize("config", [mt.MoeConfig(16, mt.GemmConfig(64, 64), mt.GemmConfig(32, 128)), mt.DEFAULT_CONFIG_WIDE,
                                    mt.MoeConfig(32, mt.GemmConfig(128, 64, 4, 2), mt.GemmConfig(128, 64))])
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


def test_cuda_graph_padding_tokens_are_not_routed():
    """vLLM pads a decode batch to a captured size; its slot mapping marks the padding -1.
    Those tokens load no expert (even ids no real token routes to) and come out zero."""
    (x, w13, w2, ids, w, keep), scales = _case("fp8", t=6, e=8, k=2, seed=8)
    ids[4:] = torch.tensor([[6, 7], [7, 6]], device=DEV)  # only the padding routes to experts 6, 7
    ids[:4] = ids[:4] % 6
    slots = torch.tensor([10, 11, 12, 13, -1, -1, -1, -1], device=DEV)  # a longer buffer, as vLLM's
    poison = torch.zeros(8, dtype=torch.bool, device=DEV)
    poison[6:] = True
    nan = torch.tensor(float("nan"), device=DEV)
    w13 = torch.where(poison[:, None, None], nan, w13.float()).to(w13.dtype)
    w2 = torch.where(poison[:, None, None], nan, w2.float()).to(w2.dtype)
    out = mt.moe_triton(x, w13, w2, ids, w, keep, **scales, config=TINY, pad_slots=slots)
    real = keep & (slots[:6, None] >= 0)
    assert torch.all(out[4:] == 0) and torch.isfinite(out.float()).all()
    assert _rel_err(out, _ref64((x, w13, w2, ids, w, real), scales, "fp8")) < 1e-4


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
    with pytest.raises(ValueError, match="128x128"):  # e.g. a per-tensor or per-channel scale
        mt.moe_triton(*args, w13_scale=scales["w13_scale"][:, :, :1], w2_scale=scales["w2_scale"], config=TINY)
    with pytest.raises(ValueError, match="gate_up block_n"):  # h's 1x128 scale group must be one tile
        mt.moe_triton(*args, **scales, config=mt.MoeConfig(8, mt.GemmConfig(64, 128), TINY.down))


# DeepSeek-V3: hidden 7168, expert intermediate 2048, top-8; a 16-expert slice of the 256.
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["bf16", "fp8"])
@pytest.mark.parametrize("tokens", [1, 64])
def test_deepseek_v3_shapes_on_gpu(kind, tokens):
    args, scales = _case(kind, t=tokens, h=7168, i=2048, e=16, k=8, p_keep=0.6)
    out = mt.moe_triton(*args, **scales)  # the default config for the dtype
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


def test_saving_share_compares_time_saved_with_bytes_saved():
    from skipbench_kernels.bench import _saving_shares

    bw = 1e9  # bytes/s: 1e6 bytes take 1 ms
    rows = [dict(method="k", batch=1, rule="dense", bytes=4e6, ms=5.0),
            dict(method="k", batch=1, rule="top2", bytes=2e6, ms=3.5),  # saved 1.5 of an ideal 2 ms
            dict(method="w0", batch=1, rule="dense", bytes=4e6, ms=5.0),
            dict(method="w0", batch=1, rule="top2", bytes=4e6, ms=5.0)]  # nothing skipped: no ideal saving
    out = {(r["method"], r["rule"]): r for r in _saving_shares(rows, bw)}
    assert out["k", "top2"]["saving_share"] == pytest.approx(0.75)
    assert out["k", "top2"]["speedup_vs_dense"] == pytest.approx(5 / 3.5)
    assert out["w0", "top2"]["saving_share"] != out["w0", "top2"]["saving_share"]  # NaN


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="the smoke run is the CPU path; GPUs run the full bench")
def test_bench_smoke_run_writes_a_table_the_roofline_reads(tmp_path):
    import json

    import pandas as pd

    from skipbench.speed.roofline import fit_kernel_calibration
    from skipbench.speed.specs import load_profile
    from skipbench_kernels.bench import main

    assert main(["--out", str(tmp_path), "--smoke", "--budget-s", "30", "--tune-share", "0.05"]) == 0
    meta = json.loads((tmp_path / "bench.json").read_text())
    assert meta["interpreter"] and all(c["passed"] for c in meta["checks"])
    rows = pd.read_csv(tmp_path / "bench_rows.csv")
    assert set(rows["method"]) == {"skip_kernel", "weight0_kernel", "grouped_mm_bf16", "eager_loop_bf16"}
    assert set(rows["rule"]) == {"dense", "top4", "top2", "threshold0.3", "batch_aware2"}
    ran = rows[rows["status"].str.startswith("ok")]
    assert len(ran) >= 4 and (ran["ms"] > 0).all()
    assert rows[~rows["status"].str.startswith("ok")]["ms"].isna().all()  # not run is never a number
    # the control computes every routed slot, so it never loads fewer experts than dense
    w0 = rows[rows["method"] == "weight0_kernel"].groupby("batch")["distinct_experts"]
    assert (w0.nunique() == 1).all()
    kernel = pd.read_csv(tmp_path / "kernel_bench.csv")
    assert {"batch", "rule", "distinct_experts", "slots", "ms"} <= set(kernel.columns)
    cal = fit_kernel_calibration(kernel.dropna(subset=["ms"]), load_profile("h200"))
    assert cal.points == kernel["ms"].notna().sum()
    live = pd.read_csv(tmp_path / "rows_live.csv")  # appended row by row: the same rows
    assert len(live) == len(rows) and list(live["ms"].isna()) == list(rows["ms"].isna())
    parts = pd.read_csv(tmp_path / "parts.csv")
    assert {"layout", "prepare", "gate_up", "down", "layer", "vllm_fused_moe"} <= set(parts["part"])
    assert parts[parts["part"] == "vllm_fused_moe"]["status"].str.startswith("not run").all()  # GPU only
    assert parts[~parts["status"].str.startswith("ok")]["ms"].isna().all()


def _tiny_transformers_model():
    import sys
    from pathlib import Path

    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import ARCH

    cfg = DeepseekV3Config(**{**ARCH, "hidden_size": 128, "moe_intermediate_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2})  # fmt: skip
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(cfg).eval()


def test_transformers_moe_on_the_kernel_matches_eager_experts_with_sentinel_skips():
    from skipbench.infer.oracle import patch_model
    from skipbench.skip.strategies import SkipRule
    from skipbench_kernels.integration import SkipAwareExperts, patch_experts
    from skipbench_kernels.tune import Tuned

    model = _tiny_transformers_model()
    patch_model(model, SkipRule("topk", k=2))  # dropped slots reach the experts as id E
    tokens = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(tokens).logits
        names = patch_experts(model, [Tuned(64, mt.MoeConfig(16, mt.GemmConfig(32, 64), mt.GemmConfig(64, 64)), 0.0)])
        fused = model(tokens).logits
    assert names == ["model.layers.1.mlp"] and isinstance(model.model.layers[1].mlp.experts, SkipAwareExperts)
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-4)


def test_kernel_choice_from_manifest_and_patch_only_where_triton_runs(tmp_path):
    from skipbench.io import write_table
    from skipbench.model.kernel_build import KERNEL_MANIFEST_SCHEMA
    from skipbench_kernels.integration import KernelChoice, SkipAwareExperts, load_kernel_choice, use_skip_kernel
    from skipbench_kernels.tune import Tuned, configs_to_json

    big = mt.MoeConfig(64, mt.GemmConfig(128, 128), mt.GemmConfig(128, 128))
    tuned = [Tuned(16, TINY, 0.1), Tuned(512, big, 1.0)]
    row = {n: None for n in KERNEL_MANIFEST_SCHEMA.names} | dict(
        backend="triton", reason="test", passed=True, configs=configs_to_json(tuned), tuned_dtype="fp8")
    write_table(tmp_path / "m.parquet", [row], KERNEL_MANIFEST_SCHEMA)
    choice = load_kernel_choice(tmp_path / "m.parquet")
    assert choice.backend == "triton" and choice.tuned == tuned
    assert choice.config_for(1) == TINY and choice.config_for(100) == big and choice.config_for(4096) == big
    assert KernelChoice.from_json(choice.to_json()) == choice  # how vLLM workers receive it
    model = _tiny_transformers_model()
    assert use_skip_kernel(model, KernelChoice("reference", "no GPU")) is None  # engine keeps its own path
    assert not any(isinstance(m, SkipAwareExperts) for m in model.modules())
    # Triton runs here (GPU, or its interpreter on CPU as in these tests): the experts are replaced
    assert use_skip_kernel(model, choice) == "skip_kernel"
    assert isinstance(model.model.layers[1].mlp.experts, SkipAwareExperts)


def test_triton_runs_on_cuda_or_under_the_interpreter(monkeypatch):
    import triton

    from skipbench_kernels.integration import triton_runs_on

    assert triton_runs_on(torch.device("cuda"))
    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    assert not triton_runs_on(torch.device("cpu"))
    monkeypatch.setattr(triton.knobs.runtime, "interpret", True)
    assert triton_runs_on(torch.device("cpu"))


def test_tuner_keeps_the_fastest_correct_config_and_survives_failing_ones():
    from skipbench_kernels.tune import block_m_space, gemm_space, tune

    def cost(cfg):  # a made-up landscape: best at block_m 32, down 128 wide, then block_m 16 down 64
        if cfg.down.block_n == 32:
            raise RuntimeError("out of shared memory")  # must be skipped, not fatal
        return abs(cfg.block_m - 32) + abs(cfg.down.block_n - 128) + cfg.gate_up.num_stages

    timed = []

    def timer(fn):
        timed.append(fn)
        return float(fn())

    def check(cfg):  # the fastest config computes a wrong answer: never timed, never chosen
        return 1.0 if (cfg.block_m, cfg.down.block_n) == (32, 128) else 1e-3

    best = tune(lambda cfg: (lambda: cost(cfg)), True, 7168, 2048, tokens=512, slots=8, experts=256, check=check,
                tolerance=2e-2, timer=timer, budget_s=30)  # fmt: skip
    assert (best.config.block_m, best.config.down.block_n) != (32, 128)
    assert best.ms == cost(best.config) == min(cost(c) for c in _all_configs(tune_space=(gemm_space, block_m_space))
                                                if (c.block_m, c.down.block_n) != (32, 128) and c.down.block_n != 32)
    assert len(timed) < 60  # refused configs were not timed
    assert block_m_space(1, 8, 256) == (8, 16)
    assert all(g.block_k == 128 for g in gemm_space(True, 7168, 2048))
    assert {g.block_n for g in gemm_space(True, 7168, 2048, gate_up=True)} == {128}
    assert {g.block_k for g in gemm_space(False, 7168, 2048)} == {64, 128}
    with pytest.raises(RuntimeError, match="no tile config"):
        tune(lambda cfg: (lambda: 1.0), True, 7168, 2048, 16, 8, 256, check=lambda c: float("nan"), tolerance=2e-2,
             timer=timer, budget_s=30)  # fmt: skip


def _all_configs(tune_space):
    gemm_space, block_m_space = tune_space
    return [mt.MoeConfig(m, g, d) for m in block_m_space(512, 8, 256) for g in gemm_space(True, 7168, 2048, gate_up=True)
            for d in gemm_space(True, 2048, 7168)]


def test_reference_checker_passes_the_kernel_and_catches_a_wrong_one(monkeypatch):
    from skipbench_kernels.tune import reference_checker

    (_, w13, w2, _, _, _), scales = _case("fp8", e=4, seed=6)
    check = reference_checker(w13, w2, scales, tokens=9)
    assert check(TINY) < TOLERANCE["fp8"]
    right = mt.moe_triton
    monkeypatch.setattr(mt, "moe_triton", lambda *a, **kw: right(*a, **kw) * 1.05)  # a tile config gone wrong
    assert reference_checker(w13, w2, scales, tokens=9)(TINY) > TOLERANCE["fp8"]
