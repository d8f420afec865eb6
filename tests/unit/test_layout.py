"""The package layout: no import circle, no reach into another package's private
modules, a few loose modules in ``services/``, and exception names that never repeat.

The import graph is read from the source (``ast``), so it sees imports inside functions
and under ``TYPE_CHECKING`` too: a circle hidden by a local or type-only import is still
a circle for a reader. Importing ``a.b.c`` from outside ``a.b`` also runs ``a.b``'s
``__init__``, so it counts as an edge to that package as well.
"""

from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("adapter_store", "scheduler", "services")
EXCEPTION_MODULES = (
    "adapter_store.exceptions",
    "scheduler.exceptions",
    "services.exceptions",
    "services.engine.exceptions",
)
MAX_LOOSE_SERVICES_MODULES = 5


@cache
def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _imported(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement in module ``name`` names."""
    known = modules()
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = name.split(".")
            anchor = anchor if _is_package(name) else anchor[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        targets = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
            for alias in node.names
        ]
    return [t for t in targets if t in known]


@cache
def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (with the packages that run on the way)."""
    edges: dict[str, set[str]] = {}
    for name, path in modules().items():
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(name, node):
                out.add(target)
                parts = target.split(".")
                for depth in range(1, len(parts)):
                    package = ".".join(parts[:depth])
                    if not (name == package or name.startswith(package + ".")):
                        out.add(package)  # a sibling room's __init__ runs first
        out.discard(name)
        edges[name] = out
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_should() -> None:
    edges = graph()

    assert "services.api._auth" in edges["services.api._dashboard._routes"]
    assert "services.engine" in edges["services.serve._replica"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_in_a_circle() -> None:
    assert _cycles(graph()) == []


def test_no_package_imports_another_package_private_module() -> None:
    reaches = sorted(
        (name, target)
        for name, targets in graph().items()
        for target in targets
        if target.split(".")[0] != name.split(".")[0]
        and any(part.startswith("_") for part in target.split(".")[1:])
    )

    assert reaches == []


def test_services_keeps_its_code_in_rooms() -> None:
    loose = sorted(path.name for path in (ROOT / "services").glob("*.py"))

    assert len(loose) <= MAX_LOOSE_SERVICES_MODULES, loose


def test_no_two_packages_name_an_exception_alike() -> None:
    owners: dict[str, list[str]] = {}
    for module in EXCEPTION_MODULES:
        for name in importlib.import_module(module).__all__:
            owners.setdefault(name, []).append(module)

    assert {name: where for name, where in owners.items() if len(where) > 1} == {}
