"""No import circle among the modules inside each of a few subpackages: their imports form a tree (a DAG).

A circle makes a module's names depend on which module of the circle was imported first; the CLI keeps its
vocabulary in a leaf (``process_comms/cli/base.py``) for that reason. Every import counts, also one inside a
function or under ``if TYPE_CHECKING:``: moving an import there hides a circle from the interpreter, it does
not remove the dependency. Each circle found is printed as ``a -> b ..> a``, ``->`` for an import at module
level and ``..>`` for one that runs later (in a function) or only for the type checker. The import walker is
tests/test_layers.py's.
"""

from __future__ import annotations

import itertools

import pytest

from tests.test_layers import ROOT, imported_modules, module_name

#: The subpackages whose modules must import one another as a tree (a DAG), never in a circle.
SUBPACKAGES = ("cli", "transports/rmq", "worker")


def import_graph(subpackage: str, module_level: bool = False) -> dict[str, set[str]]:
    """``{module: the modules of the same subpackage it imports}`` (with ``module_level``, at import time only)."""
    known = {module_name(path) for path in ROOT.rglob("*.py")}
    inside = sorted((ROOT / subpackage).rglob("*.py"))
    members = {module_name(path) for path in inside}
    return {
        module_name(path): (imported_modules(path, known, module_level) & members) - {module_name(path)}
        for path in inside
    }


def cycle_text(cycle: list[str], at_import: dict[str, set[str]]) -> str:
    """``a -> b ..> a``: ``..>`` where the import is in a function or under ``if TYPE_CHECKING:``."""
    text = cycle[0]
    for before, after in itertools.pairwise(cycle):
        text += f" {'->' if after in at_import.get(before, ()) else '..>'} {after}"
    return text


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The elementary circles of ``graph``, each once, as ``[a, b, ..., a]``, starting at its smallest module.

    A depth-first search from each module that finds its way back to it through modules after it only.
    """
    found: list[list[str]] = []
    for start in sorted(graph):
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for following in sorted(graph.get(node, ())):
                if following == start:
                    found.append([*path, start])
                elif following > start and following not in path:
                    stack.append((following, [*path, following]))
    return found


def test_cycle_finder_finds_each_circle_once() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"d", "b"}}
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["b", "c", "d", "b"], ["d", "d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_no_import_cycle_inside(subpackage: str) -> None:
    found = cycles(import_graph(subpackage))
    at_import = import_graph(subpackage, module_level=True)
    lines = [cycle_text(cycle, at_import) for cycle in found]
    for line in lines:
        print(line)
    assert found == [], f"{len(found)} import circle(s) inside process_comms/{subpackage}:\n" + "\n".join(lines)
