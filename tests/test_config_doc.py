"""config/README.md is the schema's own documentation, regenerated (never hand-edited)."""

from pathlib import Path

from skipbench.config_doc import render

ROOT = Path(__file__).resolve().parents[1]


def test_config_readme_matches_the_schema():
    assert (ROOT / "config/README.md").read_text() == render(), (
        "config/README.md is stale: python -m skipbench.config_doc > config/README.md")


def test_every_schema_key_is_documented():
    text = render()
    for key in ("`run`", "`variants.<name>.k`", "`execution.sandbox`", "`throughput.variants`",
                "`benchmarks.<name>.samples`", "`model.synthetic.memorise.max_steps`"):  # fmt: skip
        assert key in text


def test_a_comma_in_an_unquoted_flow_description_is_refused():
    import pytest
    import yaml

    from skipbench.config_doc import stray_keys

    cut = yaml.safe_load("properties:\n  t: {type: number, description: cap per (sample, split) run}\n")
    assert stray_keys(cut) == ["t: 'split) run'"]
    with pytest.raises(ValueError, match="quote a description"):
        render(cut)
    assert stray_keys(yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())) == []
    assert "cap per (sample, split) run" in render()
