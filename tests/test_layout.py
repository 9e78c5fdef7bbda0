"""The package's import rules, read from the source (ast): who may import whom.

- no module imports another package's private name (a name or module starting with ``_``): what is
  shared is public;
- the training run never imports the tuner (both read ``ftplan.best``);
- the planner imports nothing of ftplan outside itself, ``ftplan.errors`` and ``ftplan.units`` (it stays pure);
- no two modules import each other, directly or through others (function-level imports included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ftplan"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(path: Path):
    """(line, imported module, imported name or None) for every ftplan import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = _package_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ftplan":
                    yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "ftplan":
                continue
            for a in node.names:
                yield node.lineno, mod, a.name


MODULES = sorted(ROOT.rglob("*.py"))
KNOWN = {_module_name(p) for p in MODULES}


def _target_module(mod: str, name: str | None) -> str:
    """The module an import loads: ``from pkg import sub`` loads ``pkg.sub`` when it is a module."""
    if name is not None and f"{mod}.{name}" in KNOWN:
        return f"{mod}.{name}"
    return mod


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_no_private_name_of_another_package(path):
    pkg = _package_of(path)
    bad = []
    for line, mod, name in _imports(path):
        target = _target_module(mod, name)
        parts = target.split(".")
        owner = ".".join(parts[:-1]) if target in KNOWN and not (ROOT.parent / Path(*parts) / "__init__.py").exists() else target
        private_module = any(_private(p) for p in parts[1:])
        private_name = name is not None and target == mod and _private(name)
        if (private_module or private_name) and owner != pkg:
            bad.append(f"line {line}: {target}{'' if target != mod else f'.{name}'}")
    assert not bad, f"{path.name} imports private names of other packages: {bad}"


def test_train_never_imports_tune():
    for path in (ROOT / "train").rglob("*.py"):
        hits = [(line, mod) for line, mod, name in _imports(path) if _target_module(mod, name).startswith("ftplan.tune")]
        assert not hits, f"{path.name}: {hits}"


def test_planner_imports_only_itself_errors_and_units():
    for path in (ROOT / "planner").rglob("*.py"):
        for line, mod, name in _imports(path):
            target = _target_module(mod, name)
            ok = target.startswith("ftplan.planner") or target in ("ftplan.errors", "ftplan.units")
            assert ok, f"{path.name}:{line} imports {target}"


def test_units_imports_only_errors():  # so the planner's purity holds through it
    for line, mod, name in _imports(ROOT / "units.py"):
        target = _target_module(mod, name)
        assert not target.startswith("ftplan") or target == "ftplan.errors", f"units.py:{line} imports {target}"


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        me = _module_name(path)
        deps = set()
        for _, mod, name in _imports(path):
            target = _target_module(mod, name)
            # importing a submodule runs its packages' __init__ too, but a package's own __init__
            # importing its children is the package's structure, not a cycle between modules
            if target != me and not me.startswith(target + ".") and target in KNOWN:
                deps.add(target)
        graph[me] = deps
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
