"""The package's shape: no import circle, and no wing importing one above it (docs/architecture.md).

Every import counts, including those inside functions (they still tie one module to another)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "emilia_pipe"

# Wings from the bottom up: a module may import from its own wing and from wings below it.
# `stages` (the package module) is only the list of stages and imports nothing, so everyone may read it.
RANK = {
    "records": 0, "runtime": 0, "emilia_pipe.stages": 0,
    "config": 1,
    "media": 2,
    "models": 3,
    "dataset": 4,
    "stages": 5, "exports": 5,
    "runners": 6,
    "cli": 7, "emilia_pipe": 7,
}
# Wings of the same rank that must not import each other.
APART = {("stages", "exports"), ("exports", "stages")}
MAX_LINES = 400
# Modules that are one idea reading better whole (each says so in its docstring).
LONG_BY_DESIGN = {"emilia_pipe.config", "emilia_pipe.runners.scheduler"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports (a name imported from a package counts as its submodule
    when there is one)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def wing(module: str) -> str:
    if module in RANK:
        return module
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, deps in g.items():
        for dst in deps:
            a, b = wing(src), wing(dst)
            if a == b:
                continue
            if RANK[b] > RANK[a] or (a, b) in APART:
                bad.append(f"{src} -> {dst} ({a} may not import {b})")
    return sorted(bad)


def test_every_module_belongs_to_a_wing():
    assert not [m for m in modules() if wing(m) not in RANK]


def test_no_import_circle():
    assert cycles(graph()) == []


def test_lower_wings_never_import_higher_ones():
    assert layer_violations(graph()) == []


def test_the_checks_can_fail():
    """The checker sees a circle and an upward import when there is one (a synthetic graph)."""
    g = {"emilia_pipe.models.a": {"emilia_pipe.stages.b"}, "emilia_pipe.stages.b": {"emilia_pipe.models.a"}}
    assert cycles(g) == [["emilia_pipe.models.a", "emilia_pipe.stages.b"]]
    assert layer_violations(g) == ["emilia_pipe.models.a -> emilia_pipe.stages.b (models may not import stages)"]
    assert layer_violations({"emilia_pipe.dataset.x": {"emilia_pipe.runners.y"}})
    assert layer_violations({"emilia_pipe.exports.x": {"emilia_pipe.stages.y"}})


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_short_or_says_why(name):
    path = modules()[name]
    lines = len(path.read_text().splitlines())
    if name in LONG_BY_DESIGN:
        assert "reads better whole" in (ast.get_docstring(ast.parse(path.read_text())) or "")
    else:
        assert lines <= MAX_LINES, f"{path} has {lines} lines: split it by idea"
