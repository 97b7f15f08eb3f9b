import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
CONFIGS = [ROOT / "config/config.yaml", *sorted((ROOT / "config/presets").glob("*.yaml"))]


def load(path):
    return yaml.safe_load(Path(path).read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load(path)
    validate(cfg, SCHEMA)
    assert cfg["engine"]["name"] in ("vllm", "transformers")


def test_schema_fills_defaults():
    cfg = {"run": "x", "model": {"source": "synthetic"}, "benchmarks": {"he": {"dataset": "humaneval"}},
           "variants": {"dense": {"strategy": "dense"}}}
    validate(cfg, SCHEMA)
    assert cfg["execution"]["sandbox"] == "bwrap"
    assert cfg["engine"]["max_model_len"] == 2048
    assert cfg["model"]["synthetic"]["memorise"]["enabled"] is True


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["engine"].update(dtpye="bfloat16"),  # typo'd key
        lambda c: c["generation"].update(max_new_tokens="many"),  # wrong type
        lambda c: c["variants"].update(bad={"strategy": "magic"}),  # unknown strategy
        lambda c: c.update(run="has space"),
        lambda c: c["execution"].update(sandbox="docker"),
    ],
)
def test_invalid_configs_fail_with_a_message(mutate):
    cfg = copy.deepcopy(load(ROOT / "config/config.yaml"))
    mutate(cfg)
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA)


def test_huggingface_revision_must_be_pinned():
    cfg = load(ROOT / "config/presets/deepseek-v3.yaml")
    cfg["model"]["huggingface"]["revision"] = "main"
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA)
