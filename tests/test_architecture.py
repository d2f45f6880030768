"""The house: `sweeps/` is layered, its imports point one way, no module is a circle's member.

Reads every module's imports with `ast` (those inside functions included) and checks them against
the layer order of docs/architecture.md, without importing anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
# bottom to top; a module may import its own package and the layers below it, nothing else
LAYERS = [
    {"sweeps", "sweeps.redact"},
    {"sweeps.train"},
    {"sweeps.spec"},
    {"sweeps.experiment"},
    {"sweeps.report"},
    {"sweeps.tracking"},
    {"sweeps.runner", "sweeps.cluster"},
    {"sweeps.cli"},
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SWEEPS.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The sweeps modules `name` imports, anywhere in its body (`from pkg import mod` -> pkg.mod)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def package_of(name: str) -> str:
    """The layer unit a module belongs to: `sweeps.train.data.text` -> `sweeps.train`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and f"{parts[0]}.{parts[1]}" in MODULES else name


def layer(name: str) -> int:
    unit = package_of(name)
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{name}: in no layer of tests/test_architecture.py (add its package)")


GRAPH = {name: imports(name) for name in MODULES}


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for name, targets in GRAPH.items():
        for target in targets:
            same = package_of(target) == package_of(name)
            if not same and layer(target) >= layer(name):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layer order: " + ", ".join(sorted(wrong))


def test_no_import_circle() -> None:
    """Depth-first search for a back edge (package __init__ files that only re-export count too)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1 and not _reexport(stack[stack.index(nxt):] + [nxt]):
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import circle: " + " -> ".join(cycle)


def _reexport(cycle: list[str]) -> bool:
    """A package's __init__ re-exporting its own submodules, reached from one of them through a
    `from package.sub import ...` (which Python resolves without the __init__'s names): no circle."""
    return any(MODULES[m].name == "__init__.py" and all(n == m or n.startswith(m + ".") for n in cycle)
               for m in cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it by concern (at most {MAX_LINES})"


def test_the_layer_test_catches_a_wrong_import(tmp_path: Path) -> None:
    """The check itself can fail: an upward import from the train layer into the runner is found."""
    fake = SWEEPS / "train" / "_probe_upward.py"
    fake.write_text("from sweeps.runner import grid\n")
    try:
        MODULES[module_name(fake)] = fake
        GRAPH[module_name(fake)] = imports(module_name(fake))
        with pytest.raises(AssertionError, match="sweeps.train._probe_upward -> sweeps.runner.grid"):
            test_every_import_points_down_the_layers()
    finally:
        fake.unlink()
        MODULES.pop(module_name(fake), None)
        GRAPH.pop(module_name(fake), None)
