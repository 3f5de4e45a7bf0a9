"""The package's layout holds: no import cycles, and the layers depend downwards.

Read from the source with `ast` (nothing is imported), so a cycle that only type hints
close is caught too: it still ties two modules together for a reader and a refactor.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import surge

SRC = Path(surge.__file__).parent

# Cycles known and owned elsewhere, each with its way out. The test also fails when one
# is gone, so this list only shrinks.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Who may import whom, by top-level part (a subpackage, or a module of its own). Parts
# not listed are not checked. Policies (routing) know the config and the core, never
# the layers that do I/O; the store and the runtimes know nothing above them.
ALLOWED: dict[str, set[str]] = {
    "surge.core": set(),
    "surge.repository": {"surge.core"},
    "surge.store": {"surge.core"},
    "surge.runtimes": {"surge.core", "surge.repository"},
    "surge.routing": {"surge.core", "surge.config"},
}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        parts = ("surge", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _owner(name: str) -> str | None:
    """The module `name` is, or whose attribute it is (`surge.core.clock.monotonic`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _top_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module loads, `if TYPE_CHECKING:` blocks included;
    function bodies are not: an import deferred into a function is a deliberate choice
    (an optional backend, the factory that picks one)."""
    for statement in body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield statement
        if isinstance(statement, ast.ClassDef):
            yield from _top_level_statements(statement.body)
        for block in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(statement, block, None)
            if isinstance(inner, list) and not isinstance(statement, ast.ClassDef):
                yield from _top_level_statements(inner)


def _imports(module: str, statements: Iterator[ast.stmt] | list[ast.AST]) -> set[str]:
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in statements:
        if isinstance(node, ast.Import):
            found |= {_owner(alias.name) for alias in node.names if alias.name.startswith("surge")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if base.split(".")[0] != "surge":
                continue
            for alias in node.names:
                found.add(_owner(f"{base}.{alias.name}"))
    found.discard(None)
    found.discard(module)
    return found  # type: ignore[return-value]


def _graph(everywhere: bool) -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree) if everywhere else _top_level_statements(tree.body)
        graph[module] = _imports(module, nodes)
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))
    return found


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == {frozenset({"a", "b", "c"})}


def test_no_import_cycles_among_surge_modules():
    cycles = _cycles(_graph(everywhere=False))
    assert cycles - KNOWN_CYCLES == set(), "new import cycles"
    assert KNOWN_CYCLES - cycles == set(), "a known cycle is gone: drop it from KNOWN_CYCLES"


def test_the_layers_depend_downwards():
    graph = _graph(everywhere=True)  # a deferred import is still a dependency
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _part(module) in ALLOWED
        for target in targets
        if _part(target) != _part(module) and _part(target) not in ALLOWED[_part(module)]
    )
    assert wrong == []
