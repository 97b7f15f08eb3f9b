"""Config mistakes refused while planning, each message naming the config file, the line and
the key (skipbench.config_where, skipbench.plan_checks). Fast: the checks run on a config
file written here, the way the Snakefile runs them, without Snakemake."""

import copy
from pathlib import Path

import pytest
import yaml

from skipbench import plan_checks
from skipbench.cli import parse_variant
from skipbench.config_check import check_benchmarks
from skipbench.config_where import ConfigError, ConfigSource, check_schema, key_lines

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
DEFAULT = (ROOT / "config/config.yaml").read_text()


def configured(tmp_path, old: str = "", new: str = "") -> tuple[dict, ConfigSource, Path]:
    """The embedded default with `old` replaced by `new`, written to a file: (config, source, file)."""
    assert old in DEFAULT
    path = tmp_path / "config.yaml"
    path.write_text(DEFAULT.replace(old, new, 1))
    return yaml.safe_load(path.read_text()), ConfigSource([path]), path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def refused(check, *args) -> str:
    errors = check(*args)
    assert errors, "accepted"
    return "\n".join(errors)


def test_the_default_passes_every_check(tmp_path):
    cfg, src, _ = configured(tmp_path)
    check_schema(cfg, SCHEMA, src)
    assert plan_checks.check_plan(cfg, src, ROOT, calibrated=True, local=False) == []


def test_a_variant_named_dense_that_is_not_dense(tmp_path):
    cfg, src, f = configured(tmp_path, "dense: {strategy: dense}", "dense: {strategy: topk, k: 2}")
    msg = refused(plan_checks.check_dense, cfg, src)
    assert f"{f}:{line_of(f, 'dense: {strategy: topk')}: variants.dense: " in msg and "must be exactly" in msg


def test_no_dense_variant(tmp_path):
    cfg, src, f = configured(tmp_path, "  dense: {strategy: dense}\n", "")
    assert f"{f}:{line_of(f, 'variants:')}: variants: no variant named 'dense'" in refused(plan_checks.check_dense, cfg, src)
    cfg, src, f = configured(tmp_path, "tasks: 10", "tasks: 10\n    variants: [rtop2]")
    assert f"{f}:{line_of(f, 'variants: [rtop2]')}: benchmarks.humaneval.variants: ['rtop2'] leaves out 'dense'" in \
        refused(plan_checks.check_dense, cfg, src)
    cfg, src, f = configured(tmp_path, "variants: [dense, rtop1]", "variants: [rtop1]")
    assert f"{f}:{line_of(f, 'variants: [rtop1]')}: throughput.variants" in refused(plan_checks.check_dense, cfg, src)


def test_a_variant_named_external_is_refused(tmp_path):
    cfg, src, f = configured(tmp_path, "  oea1:", "  external: {strategy: topk, k: 2}\n  oea1:")
    assert f"{f}:{line_of(f, 'external: {')}: variants.external: the name 'external' is reserved" in \
        refused(plan_checks.check_dense, cfg, src)


@pytest.mark.parametrize("old, new, key, needle", [
    ("concurrency: [1, 4, 16]", "concurrency: [1, 100000]", "throughput.concurrency.1", "maximum of 1024 (at most 1024: vLLM"),
    ("layers: [3]", "layers: []", "variants.nolayer3.layers", "[] should be non-empty"),
    ("max_new_tokens: 160", "max_new_tokens: many", "generation.max_new_tokens", "'many' is not of type 'integer'"),
    ("sandbox: bwrap", "sandbox: docker", "execution.sandbox", "'docker' is not one of"),
])  # fmt: skip
def test_schema_errors_name_file_line_and_key(tmp_path, old, new, key, needle):
    cfg, src, f = configured(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        check_schema(cfg, SCHEMA, src)
    assert f"{f}:{line_of(f, new)}: {key}: " in str(err.value) and needle in str(err.value)
    assert "Failed validating" not in str(err.value)  # no schema dump


def test_yaml_syntax_error_and_duplicate_key_name_file_and_line(tmp_path):
    f = tmp_path / "torn.yaml"
    f.write_text(DEFAULT.replace("oea2: {strategy: batch_aware, k0: 2}", "oea2: {strategy: batch_aware, k0: 2"))
    with pytest.raises(ConfigError, match=rf"{f}:\d+: not valid YAML"):
        key_lines(f)
    f.write_text(DEFAULT.replace("  oea1:", "  rtop1: {strategy: topk, k: 3}\n  oea1:"))
    with pytest.raises(ConfigError, match=rf"{f}:{line_of(f, 'rtop1: {strategy: topk')}: duplicate key 'rtop1' "
                                          rf"\(first at line {line_of(f, 'rtop1: {strategy: router')}\) in variants"):
        key_lines(f)


def test_a_later_config_file_wins_the_line(tmp_path):
    cfg, _, base = configured(tmp_path)
    over = tmp_path / "over.yaml"
    over.write_text("report:\n  hardware: a100\n")
    src = ConfigSource([base, over])
    cfg["report"]["hardware"] = "a100"
    msg = refused(plan_checks.check_hardware, cfg, src, ROOT / "config/hardware")
    assert f"{over}:2: report.hardware: 'a100' has no profile" in msg and "'h200'" in msg


def test_unknown_roofline_hardware(tmp_path):
    cfg, src, f = configured(tmp_path, "report:\n", "roofline:\n  hardware: [this-machine, tpu-v9]\nreport:\n")
    assert f"{f}:{line_of(f, 'tpu-v9')}: roofline.hardware.1: 'tpu-v9' has no profile" in \
        refused(plan_checks.check_hardware, cfg, src, ROOT / "config/hardware")


def test_max_model_len_too_small_for_the_generation(tmp_path):
    cfg, src, f = configured(tmp_path, "max_model_len: 1024", "max_model_len: 64")
    assert f"{f}:{line_of(f, 'max_model_len')}: engine.max_model_len: 64 leaves no room" in \
        refused(plan_checks.check_lengths, cfg, src)


def test_gpu_preset_on_a_cpu_machine_and_no_disk_for_its_download():
    path = ROOT / "config/presets/qwen3-30b-a3b.yaml"
    cfg, src = yaml.safe_load(path.read_text()), ConfigSource([path])
    msg = refused(plan_checks.check_machine, cfg, src, 0, 10**15)
    assert f"{path}:{line_of(path, 'gpus:')}: engine.gpus: 1 GPUs per inference job, this machine shows 0" in msg
    assert plan_checks.check_machine(cfg, src, 1, 10**15) == []
    cfg = copy.deepcopy(cfg)
    cfg["model"]["huggingface"]["size_gb"] = 61
    assert "model.huggingface.size_gb: the download needs 61 GB, 1.0 GB are free" in \
        refused(plan_checks.check_machine, cfg, src, 1, 10**9)


def test_an_offline_calibration_dataset_is_named_by_its_key(tmp_path, monkeypatch):
    import skipbench.config_check

    cfg, src, f = configured(tmp_path, "report:\n", "calibration:\n  dataset: humaneval_plus\nreport:\n")
    monkeypatch.setattr(skipbench.config_check, "needs_download", lambda b: b.get("dataset") == "humaneval_plus")
    msg = refused(plan_checks.check_downloads, cfg, src, True, lambda url: False)
    assert f"{f}:{line_of(f, 'dataset: humaneval_plus')}: calibration.dataset: humaneval_plus is not downloaded" in msg
    assert plan_checks.check_downloads(cfg, src, False, lambda url: False) == []  # nothing calibrated


def test_tasks_beyond_the_dataset_are_refused_not_clamped():
    with pytest.raises(ConfigError, match=r"benchmarks.he .*tasks = 1000, but the dataset .* has 164"):
        check_benchmarks({"he": {"dataset": "humaneval", "tasks": 1000}})


def test_a_livecodebench_path_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"benchmarks.lcb .*path '.*nowhere' does not exist"):
        check_benchmarks({"lcb": {"dataset": "livecodebench", "path": str(tmp_path / "nowhere")}})


def test_sandbox_none_is_announced_with_its_line(tmp_path):
    cfg, src, f = configured(tmp_path, "sandbox: bwrap", "sandbox: none")
    notices = plan_checks.check_plan(cfg, src, ROOT, calibrated=False, local=False)
    assert len(notices) == 1 and notices[0].startswith(f"{f}:{line_of(f, 'sandbox: none')}: execution.sandbox is 'none'")


def test_duplicate_key_in_a_command_line_variant():
    assert parse_variant("x=topk:k=2") == ("x", {"strategy": "topk", "k": 2})
    with pytest.raises(ValueError, match=r"'k' given twice \('2' and '3'\)"):
        parse_variant("x=topk:k=2,k=3")
