"""The package's layers, checked from its own imports (every `import`, at module level or inside a function).

    4 front ends   mtl.cli, mtl.__main__, mtl.nbtools.*       (argparse, papermill, nbval)
    3 uses         mtl.research.*  |  mtl.corpus.*             (siblings: neither imports the other)
    2 core         config, data, inputs, heads, prior, train, evaluate, checkpoint, predict, plots
    1 engine       mtl.engine.*                               (text -> vectors)
    0 foundation   mtl, errors, paths, atomic, tasks, progress

A module may import its own layer or lower ones, never a higher one, and the import graph has no cycle.
`docs/architecture.md` draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "mtl"
FOUNDATION = {"mtl", "mtl.errors", "mtl.paths", "mtl.atomic", "mtl.tasks", "mtl.progress"}
CORE = {f"mtl.{m}" for m in ("config", "data", "inputs", "heads", "prior", "train", "evaluate", "checkpoint", "predict", "plots")}


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a module; siblings of one rank are different groups."""
    if module in FOUNDATION:
        return 0, "foundation"
    if module.startswith("mtl.engine"):
        return 1, "engine"
    if module in CORE:
        return 2, "core"
    if module.startswith("mtl.research"):
        return 3, "research"
    if module.startswith("mtl.corpus"):
        return 3, "corpus"
    if module in ("mtl.cli", "mtl.__main__") or module.startswith("mtl.nbtools"):
        return 4, "front"
    raise AssertionError(f"{module}: not placed in a layer; add it to tests/test_layout.py and docs/architecture.md")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The mtl modules `path` imports (`from mtl.x import y` counts as mtl.x.y when that is a module, else mtl.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mtl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtl"):
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module)
    return found & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_module_has_a_layer_and_nothing_imports_upward_or_sideways():
    bad = []
    for mod, deps in graph().items():
        rank, group = layer(mod)
        for dep in deps:
            dep_rank, dep_group = layer(dep)
            if dep == "mtl":
                continue  # the package itself (its version) is foundation
            if dep_rank > rank or (dep_rank == rank and dep_group != group):
                bad.append(f"{mod} ({group}) imports {dep} ({dep_group})")
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(d):], d]) if d in path else d)
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_the_engine_needs_nothing_above_the_foundation():
    for mod, deps in graph().items():
        if mod.startswith("mtl.engine"):
            assert all(d.startswith("mtl.engine") or d in FOUNDATION for d in deps), (mod, deps)
