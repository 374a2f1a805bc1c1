"""No import cycles among the modules of trio_sendmail.

Every module of the package is read with :mod:`ast` (nothing is imported) and
each import it runs at import time becomes an edge of a graph: the module-level
statements, including those in ``if``/``try``/``with`` blocks and class bodies,
but not those in functions (run later) nor under ``if TYPE_CHECKING:`` (never
run). A cycle in that graph is a group of modules that can each only be
imported once another of them is: the order they work in depends on which one
is imported first.

The imports under ``if TYPE_CHECKING:`` are counted too, in a second check:
a cycle there runs nothing at import time, but it still means two modules
each need the other to be read, so neither is a floor below the other. An
error module that needs a path or a reply takes it as a value, or the type
moves down a floor.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "trio_sendmail"
_SPEC = importlib.util.find_spec(PACKAGE)  # finds the package without running it
assert _SPEC is not None and _SPEC.origin is not None
ROOT = Path(_SPEC.origin).resolve().parent

#: Known cycles outside the command line, to be removed: a cycle found is
#: accepted only if all its modules are in one of these. Shrink them, never grow
#: them. Empty: when this test was written there was none.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((PACKAGE, *parts))] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    body: list[ast.stmt], deferred: bool, typing: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of *body* that run when the module is imported, and
    if *deferred* those in its functions too; if *typing*, those for the type
    checker (under ``if TYPE_CHECKING:``) too."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if deferred:
                yield from _imports(node.body, deferred, typing)
        elif isinstance(node, ast.If):
            if typing or not _is_type_checking(node.test):
                yield from _imports(node.body, deferred, typing)
            yield from _imports(node.orelse, deferred, typing)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _imports(block, deferred, typing)
            for handler in node.handlers:
                yield from _imports(handler.body, deferred, typing)
        elif isinstance(node, ast.With | ast.AsyncWith | ast.ClassDef):
            yield from _imports(node.body, deferred, typing)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.While):
            yield from _imports(node.body, deferred, typing)
            yield from _imports(node.orelse, deferred, typing)
        elif isinstance(node, ast.Match):
            for case in node.cases:
                yield from _imports(case.body, deferred, typing)


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def _imported(
    name: str, path: Path, modules: dict[str, Path], deferred: bool, typing: bool = False
) -> set[str]:
    """The modules of the package that the module *name* imports at import time
    (and if *deferred*, in its functions; if *typing*, for the type checker).

    ``from X import y`` depends on ``X.y`` if that is a module, else on ``X``
    itself (it needs ``X``'s attribute). The packages above a module are always
    imported before it: they count only when named (``from .. import y``),
    not when they are merely on the way.
    """
    is_package = path.name == "__init__.py"
    anchor = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in _imports(tree.body, deferred, typing):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add(alias.name)
                targets.update(_ancestors(alias.name) - _ancestors(name))
            continue
        base = importlib.util.resolve_name("." * node.level + (node.module or ""), anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in modules else base)
        targets.update(_ancestors(base) - _ancestors(name))
    return {target for target in targets if target in modules and target != name}


def _graph(*, deferred: bool = False, typing: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: _imported(name, path, modules, deferred, typing) for name, path in modules.items()
    }


def _strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The groups of modules that import each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(frozenset(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _cycle(group: frozenset[str], graph: dict[str, set[str]]) -> list[str]:
    """One path around *group*, for the failure message: ``a -> b -> a``."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & group):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"{sorted(group)} is not a cycle")  # pragma: no cover


def test_the_graph_sees_the_imports() -> None:
    graph = _graph()
    assert f"{PACKAGE}._cli" in graph
    assert f"{PACKAGE}._cli._common" in graph[f"{PACKAGE}._cli._send"]
    assert f"{PACKAGE}._cli" in graph[f"{PACKAGE}.__main__"]
    # The demo is imported by a function of the command line, when it runs.
    assert f"{PACKAGE}._demo" not in graph[f"{PACKAGE}._cli"]
    assert f"{PACKAGE}._demo" in _graph(deferred=True)[f"{PACKAGE}._cli"]


def test_the_typing_graph_sees_the_type_checking_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._reply import Reply\n",
        encoding="utf-8",
    )
    modules = {f"{PACKAGE}.m": module, f"{PACKAGE}._reply": ROOT / "_reply.py"}
    assert _imported(f"{PACKAGE}.m", module, modules, deferred=False) == set()
    assert _imported(f"{PACKAGE}.m", module, modules, deferred=False, typing=True) == {
        f"{PACKAGE}._reply"
    }


def test_strongly_connected_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(map(sorted, _strongly_connected(graph))) == [["a", "b", "c"], ["d"]]
    assert _cycle(frozenset("abc"), graph) == ["a", "b", "c", "a"]


def _cycles(graph: dict[str, set[str]], allowed: tuple[frozenset[str], ...]) -> list[str]:
    return [
        " -> ".join(_cycle(group, graph))
        for group in _strongly_connected(graph)
        if len(group) > 1 and not any(group <= known for known in allowed)
    ]


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph(), KNOWN_CYCLES)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_import_cycles_even_for_the_type_checker() -> None:
    """Counting the imports under ``if TYPE_CHECKING:``, in the whole package:
    the errors that carry a reply or a path live above ``_reply`` and ``_address``
    (``_reply_errors``), not in ``_errors``, which they import."""
    cycles = _cycles(_graph(typing=True), ())
    assert not cycles, "import cycles (counting TYPE_CHECKING imports):\n" + "\n".join(cycles)


def test_the_command_line_has_no_cycle_even_through_functions() -> None:
    """The command line's modules import one another in one direction only, even
    counting the imports in functions (which once hid a cycle)."""
    cycles = [cycle for cycle in _cycles(_graph(deferred=True), ()) if "._cli" in cycle]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
