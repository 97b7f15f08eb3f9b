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
