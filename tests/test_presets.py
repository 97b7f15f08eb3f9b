"""Presets in config/presets/: complete, schema-valid configs of real models.

Each preset replaces the embedded config (`--configfile P --replace-workflow-config`), so
it must validate on its own, pin a commit, state its routing and disk size, request the
GPUs its parallel layout uses, and only name skip rules that apply to its router.
"""

from collections import namedtuple
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from skipbench.model import fp8
from skipbench.model.adapters import FAMILIES, Routing
from skipbench.skip.strategies import SkipRule

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
PRESETS = sorted((ROOT / "config/presets").glob("*.yaml"))
GPU_GB = 141  # H200, the largest GPU a preset may assume per device
ROUTING_KEYS = set(Routing.__dataclass_fields__)


def load(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    validate(cfg, str(SCHEMA))  # also fills schema defaults, as the Snakefile does
    return cfg


def test_presets_cover_the_issue():
    names = {p.stem for p in PRESETS}
    assert {"deepseek-v3", "deepseek-v3-0324", "deepseek-coder-v2-lite", "deepseek-v2-lite"} <= names
    families = {load(p)["model"]["expected_routing"]["family"] for p in PRESETS}
    assert len(families - {"deepseek_v3", "deepseek_v2"}) >= 2, "at least two non-DeepSeek MoE families"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_is_complete_and_valid(path):
    cfg = load(path)
    assert cfg["run"] == path.stem, "results/<run>/ must not collide between presets"
    hf = cfg["model"]["huggingface"]
    assert cfg["model"]["source"] == "huggingface"
    assert len(hf["revision"]) == 40 and int(hf["revision"], 16) >= 0, "pinned commit, never a branch"
    assert hf["size_gb"] > 1
    routing = cfg["model"]["expected_routing"]
    assert set(routing) == ROUTING_KEYS, "every routing field stated"
    assert routing["family"] in FAMILIES
    assert routing["top_k"] <= routing["experts"] and routing["topk_group"] <= routing["n_group"]
    assert cfg["model"]["convert"] in ("none", "fp8_to_bf16", "bf16_to_fp8")
    assert set(cfg["benchmarks"]) and SkipRule.from_config(cfg["variants"]["dense"]).is_dense


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_engine_layout_fits_the_gpus(path):
    cfg = load(path)
    eng, extra = cfg["engine"], cfg["engine"]["extra"]
    ranks = eng["tensor_parallel_size"] * extra.get("pipeline_parallel_size", 1) * extra.get("data_parallel_size", 1)
    assert eng["gpus"] == ranks, "Snakemake must request exactly the GPUs vLLM's layout uses"
    assert eng["name"] == "vllm" and not eng["enforce_eager"], "real runs use CUDA graphs"
    util = extra["gpu_memory_utilization"]
    assert 0.5 <= util <= 0.95
    # the weights (the download as served: no conversion in these presets) must leave KV room
    weights_gb = cfg["model"]["huggingface"]["size_gb"] * (2 if cfg["model"]["convert"] == "fp8_to_bf16" else 1)
    assert weights_gb / eng["gpus"] < 0.9 * util * GPU_GB, f"{weights_gb} GB on {eng['gpus']} GPUs"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_variants_apply_to_the_router(path):
    """Every variant parses, and changes something on this router (no silent no-ops)."""
    cfg = load(path)
    routing = cfg["model"]["expected_routing"]
    for name, variant in cfg["variants"].items():
        rule = SkipRule.from_config(variant)
        if rule.strategy == "topk":
            assert rule.k < routing["top_k"], f"{name}: k >= K keeps every expert"
        if rule.strategy == "group":
            assert routing["n_group"] > 1, f"{name}: {routing['family']} has no expert groups"
            assert rule.topk_group < routing["topk_group"], f"{name}: not fewer groups than the model's"


def test_deepseek_v3_presets_state_the_published_routing():
    """DESIGN.md section 1/3: 256 experts top-8, 8 groups keep 4, factor 2.5, 1 shared, 58 MoE layers."""
    for stem in ("deepseek-v3", "deepseek-v3-0324"):
        cfg = load(ROOT / f"config/presets/{stem}.yaml")
        assert cfg["model"]["expected_routing"] == dict(
            family="deepseek_v3", experts=256, top_k=8, n_group=8, topk_group=4, scoring="sigmoid",
            norm_topk_prob=True, routed_scaling_factor=2.5, shared_experts=1, selection_bias=True, moe_layers=58)
        assert cfg["model"]["convert"] == "none", "served in FP8 as shipped"
        assert cfg["model"]["huggingface"]["size_gb"] == pytest.approx(690, rel=0.05)
        assert cfg["engine"]["gpus"] == 8


def test_fp8_conversion_disk_check_fails_early_at_deepseek_v3_scale(tmp_path, monkeypatch):
    """A BF16 copy of DeepSeek-V3 (~1.3 TB, +10% headroom) with 500 GiB free: a clear error, nothing written."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fp8.shutil, "disk_usage", lambda p: usage(2 << 40, 1 << 40, 500 << 30))
    out = tmp_path / "converted"
    with pytest.raises(OSError, match=r"not enough disk space .*need about 1430\.06 GiB, 500\.00 GiB free"):
        fp8.check_free_space(out, 1300 << 30)
    assert not out.exists()
    fp8.check_free_space(out, 400 << 30)  # fits: no error
