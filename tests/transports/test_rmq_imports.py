"""The modules of ``process_comms/transports/rmq/`` import each other without a circle (a DAG), so each can be
read, and tested, after the ones it builds on. Module-level imports count, also those under ``if TYPE_CHECKING:``;
imports inside functions do not (they run later, once every module is loaded)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = "process_comms.transports.rmq"
DIRECTORY = Path(__file__).resolve().parents[2] / "process_comms" / "transports" / "rmq"


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    statements: list[ast.stmt] = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try):  # `if TYPE_CHECKING:`, optional imports
            statements.extend(node.body)
            statements.extend(node.orelse)
            statements.extend(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                statements.extend(handler.body)
    return found


def _siblings(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The modules of the package that ``node`` imports."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif node.level == 1:
        base = f"{PACKAGE}.{node.module}" if node.module else PACKAGE
        names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    elif node.level == 0 and node.module:
        names = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    else:  # from .. or higher: outside the package
        return set()
    return {name.rsplit(".", 1)[-1] for name in names if name.startswith(f"{PACKAGE}.")} & modules


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (``__init__`` included)."""
    modules = {path.stem for path in DIRECTORY.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(DIRECTORY.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = set().union(*(_siblings(node, modules) for node in _top_level_imports(tree))) - {path.stem}
    return graph


def test_the_rmq_modules_import_each_other_without_a_circle() -> None:
    graph = import_graph()
    assert "communicator" in graph and "_connection" in graph["communicator"]  # the walk sees the imports
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"an import circle in {PACKAGE}: {' -> '.join(exc.args[1])}") from None
    assert set(order) == set(graph)
