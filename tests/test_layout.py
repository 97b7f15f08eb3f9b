"""The library's folders are the pipeline: each stage package re-exports its API, imports
only earlier stages, and the top level holds plumbing alone."""

import ast
import importlib
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "workflow" / "skipbench"
# the order a stage may import in: skip rules and benchmark tasks are the shared vocabulary
RANK = {"skip": 0, "benchmarks": 0, "model": 1, "infer": 2, "execute": 3, "score": 4, "speed": 5, "report": 6}
PLUMBING = {"__init__", "cli", "config_check", "config_doc", "config_types", "config_where", "io", "jobs", "logs",
            "plan_checks", "progress", "provenance", "reproducible", "sidecars"}


def test_top_level_holds_the_stage_packages_and_plumbing_only():
    assert {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(RANK)
    assert {p.stem for p in LIB.glob("*.py")} <= PLUMBING


@pytest.mark.parametrize("package", sorted(RANK))
def test_every_name_a_stage_package_exports_resolves(package):
    mod = importlib.import_module(f"skipbench.{package}")
    assert mod.__all__
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    with pytest.raises(AttributeError):
        getattr(mod, "no_such_name")


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        found |= {n.split(".")[1] for n in names if n.startswith("skipbench.") and n.split(".")[1] in RANK}
    return found


@pytest.mark.parametrize("package", sorted(RANK))
def test_a_stage_imports_no_later_stage(package):
    late = {f"{p.relative_to(LIB)} -> {dep}" for p in (LIB / package).glob("*.py")
            for dep in _imported_packages(p) if dep != package and RANK[dep] >= RANK[package]}
    assert not late


def test_every_workflow_script_starts_as_a_job():
    """Each script logs, dies with Snakemake and holds its outputs (skipbench.jobs.start_job):
    a script that only logs outlives a killed Snakemake."""
    scripts = (LIB.parents[0] / "scripts").glob("*.py")
    assert [s.name for s in scripts if "start_job(snakemake)" not in s.read_text()] == []
