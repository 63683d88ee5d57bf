"""facekit's layers, as docs/architecture.md draws them: no import cycle, and no import upwards.

Every import counts, module-level, inside a function or under ``TYPE_CHECKING``: a lazy import
hides a dependency from Python, not from the next reader. The graph is read from the source
(``ast``), so the test needs nothing but the repository.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facekit"

# Modules that may import the plugin facade facekit.api: it is for plugins, and facekit's own
# built-in plugins are plugins like any other. Everything else imports facekit.specs & co.
FACADE_USERS = ("facekit.builtins",)
# The library never imports the command line or a built-in plugin module (plugins are found
# through their entry points, so a third-party one is loaded exactly like a built-in).
NOT_BELOW = {
    "facekit.cli": ("facekit.cli", "facekit.__main__"),  # `python -m facekit` is the command line
    "facekit.builtins": ("facekit.builtins",),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str, modules: set[str]) -> set[str]:
    """The facekit modules ``path`` imports: the longest known module each imported name starts with."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {m: imports_of(p, m, modules) for m, p in files.items()}
    # A package's __init__ re-exporting its own submodules is no cycle of the design.
    return {
        m: {d for d in deps if not (d.startswith(m + ".") and files[m].name == "__init__.py")} for m, deps in graph.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    described = [
        f"{', '.join(c)}: " + "; ".join(f"{m} -> {d}" for m in c for d in sorted(graph[m] & set(c))) for c in found
    ]
    assert not found, "import cycles:\n" + "\n".join(described)


def test_only_plugins_import_the_facade():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "facekit.api" in deps and not _within(m, FACADE_USERS))
    assert not users, f"{users} import facekit.api; import facekit.specs (or the module that owns the name) instead"


@pytest.mark.parametrize("upper", sorted(NOT_BELOW))
def test_the_library_never_imports_the_cli_or_a_builtin_plugin(upper):
    graph = import_graph()
    offenders = sorted(
        m for m, deps in graph.items() if not _within(m, NOT_BELOW[upper]) and any(_within(d, (upper,)) for d in deps)
    )
    assert not offenders, f"{offenders} import {upper}"


def test_the_low_modules_stay_low():
    """specs and config sit under everything else: they import no facekit module that could import them back."""
    graph = import_graph()
    assert graph["facekit.specs"] <= {"facekit.errors"}, graph["facekit.specs"]
    assert "facekit.engine" not in graph["facekit.runs"]
    assert "facekit.engine" not in graph["facekit.config"]
