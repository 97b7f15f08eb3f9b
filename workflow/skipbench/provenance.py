"""Which source files a rule's results depend on, found by reading imports.

A rule reruns when the code it runs changes in content (rules/common.smk `code()` puts a
hash of it in the rule's params). Listing a rule's modules by hand goes stale as soon as a
module imports another one, so the list is derived: the rule's script, then every
module of this project it imports, transitively (imports inside functions included: a
lazy import is still code the rule may run). Third-party modules are left to the lock
file and Snakemake's software-env trigger.
"""

from __future__ import annotations

import ast
from pathlib import Path


def _module_file(root: Path, parts: list[str]) -> Path | None:
    """The file of module `parts` under a package root: a module or a package's __init__."""
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, package: str, packages: dict[str, Path]) -> set[Path]:
    """Files of `packages` that `path` imports; `package` is the dotted package `path`
    belongs to ("" for a script), for relative imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [(alias.name.split("."), []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and not package:  # a relative import outside our packages
                continue
            if node.level:  # `.x` is a sibling, `..x` a sibling of the parent package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [(module.split("."), [a.name for a in node.names])]
        else:
            continue
        for parts, names in targets:
            if parts[0] not in packages:
                continue
            root = packages[parts[0]]
            for depth in range(len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                if init := _module_file(root, parts[1:depth + 1]):
                    found.add(init)
            for name in names:  # `from skipbench import io`: io may be a module
                if sub := _module_file(root, [*parts[1:], name]):
                    found.add(sub)
    return found


def source_closure(script: Path, packages: dict[str, Path]) -> list[Path]:
    """`script` and every file of `packages` ({import name: directory}) it imports,
    directly or through other modules of those packages; sorted, script first."""
    owner = {}  # file -> the dotted package it belongs to (for relative imports)
    for name, root in packages.items():
        root = Path(root).resolve()
        for path in root.rglob("*.py"):
            owner[path] = ".".join([name, *path.parent.relative_to(root).parts])
    script = Path(script).resolve()
    seen, todo = {script}, [script]
    while todo:
        path = todo.pop()
        for dep in _imported(path, owner.get(path, ""), packages):
            dep = dep.resolve()
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return [script, *sorted(seen - {script})]
