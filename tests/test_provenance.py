"""A rule's code hash covers its script and the project modules it imports, transitively."""

from pathlib import Path

from skipbench.io import content_hash
from skipbench.provenance import source_closure


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_closure_follows_imports_transitively_and_nothing_else(tmp_path):
    lib, kern = tmp_path / "lib", tmp_path / "kern"
    write(lib / "__init__.py", "")
    write(lib / "a.py", "import json\nfrom pkg import b\n")
    write(lib / "b.py", "def f():\n    import pkg.c  # lazy: still code the rule may run\n    from kern import tune\n")
    write(lib / "c.py", "")
    write(lib / "unused.py", "")
    write(kern / "tune.py", "from .reference import BLOCK\n")  # relative, within its own package
    write(kern / "reference.py", "BLOCK = 128\n")
    write(kern / "other.py", "")
    script = write(tmp_path / "scripts/stage.py", "from pkg.a import thing\nimport numpy\n")
    closure = source_closure(script, {"pkg": lib, "kern": kern})
    assert closure[0] == script.resolve()
    assert {p.relative_to(tmp_path).as_posix() for p in closure[1:]} == {
        "lib/__init__.py", "lib/a.py", "lib/b.py", "lib/c.py", "kern/tune.py", "kern/reference.py"}


def test_editing_an_indirectly_imported_module_changes_the_hash(tmp_path):
    lib = tmp_path / "lib"
    write(lib / "a.py", "from pkg import b\n")
    b = write(lib / "b.py", "X = 1\n")
    unused = write(lib / "unused.py", "Y = 1\n")
    script = write(tmp_path / "stage.py", "import pkg.a\n")
    packages = {"pkg": lib}
    before = content_hash(source_closure(script, packages))
    unused.write_text("Y = 2\n")
    assert content_hash(source_closure(script, packages)) == before
    b.write_text("X = 2\n")
    assert content_hash(source_closure(script, packages)) != before


def test_every_rule_script_resolves_its_imports():
    root = Path(__file__).resolve().parents[1]
    packages = {"skipbench": root / "workflow/skipbench", "skipbench_kernels": root / "kernels"}
    infer = {p.name for p in source_closure(root / "workflow/scripts/infer.py", packages)}
    assert {"infer.py", "engines.py", "strategies.py", "vllm_plugin.py", "prompts.py", "integration.py"} <= infer
    assert "figures.py" not in infer and "sandbox.py" not in infer
    for script in (root / "workflow/scripts").glob("*.py"):
        assert len(source_closure(script, packages)) > 1, script.name


def test_subpackages_and_their_relative_imports(tmp_path):
    lib = tmp_path / "lib"
    write(lib / "__init__.py", "")
    write(lib / "stage/__init__.py", "from .runner import run\n")
    write(lib / "stage/runner.py", "from . import helper\nfrom ..common import X\n")
    write(lib / "stage/helper.py", "")
    write(lib / "stage/unused.py", "")
    write(lib / "common.py", "X = 1\n")
    script = write(tmp_path / "stage.py", "from pkg.stage import run\n")
    closure = source_closure(script, {"pkg": lib})
    assert {p.relative_to(tmp_path).as_posix() for p in closure[1:]} == {
        "lib/__init__.py", "lib/stage/__init__.py", "lib/stage/runner.py", "lib/stage/helper.py", "lib/common.py"}
