"""The layer rule of CONTRIBUTING.md: no module of process_comms imports against the layer order.

errors/defaults/urls <- wire <- transports <- client, worker (siblings) <- dashboard, aiida (siblings) <- cli. A
module may import from its own layer or a lower one; client and worker never import each other; the dashboard (a
client of the fleet, under the command that serves it) and the aiida-core broker plugin never import the worker,
and only the plugin imports aiida-core. Relative and absolute imports both
count, and so do imports under ``if TYPE_CHECKING:``. The top-level ``__init__`` and the shims that keep
the README's module paths working (``process_comms.messages``, ``process_comms.display``) are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "process_comms"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: The rank of each layer; a module may import only modules of a rank at most its own.
RANKS = {
    "base": 0,
    "wire": 1,
    "transports": 2,
    "client": 3,
    "worker": 3,
    "dashboard": 4,
    "aiida": 4,
    "cli": 5,
    "top": 6,
}
#: Lower layers a layer may still not import.
FORBIDDEN = {"dashboard": {"worker"}, "aiida": {"worker"}}
BASE_MODULES = {"errors", "defaults", "urls", "_compat"}
#: Re-exporting modules: importing them from inside a layer would pull in everything above it.
EXEMPT = {PACKAGE, f"{PACKAGE}.messages", f"{PACKAGE}.display"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer of one of our modules (``top`` for the package itself and the shims)."""
    if module in EXEMPT:
        return "top"
    first = module.split(".")[1]
    if first in BASE_MODULES:
        return "base"
    if first in RANKS:
        return first
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layers.py and CONTRIBUTING.md")


def module_level_nodes(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported: its body, into ``if``/``try``/``with`` blocks, but
    not into functions, classes or ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.stmt] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        found.append(node)
        if isinstance(node, ast.If):
            test = node.test
            type_checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            )
            pending += node.orelse if type_checking else [*node.body, *node.orelse]
        elif isinstance(node, ast.Try):
            pending += [*node.body, *[s for h in node.handlers for s in h.body], *node.orelse, *node.finalbody]
        elif isinstance(node, ast.With):
            pending += node.body
    return found


def imported_modules(path: Path, known: set[str], module_level: bool = False) -> set[str]:
    """Every module of ours that ``path`` imports, with relative imports resolved.

    With ``module_level``, only the imports that run when the module is imported (:func:`module_level_nodes`).
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in module_level_nodes(tree) if module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from pkg import submodule` imports the submodule; `from module import name` the module
            subs = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(subs or {target})
    ours: set[str] = set()
    for module in found:
        # the longest of our modules that `module` is, or lies in (a name inside a module counts as the module)
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module:
            ours.add(module)
    return ours


def violations() -> list[str]:
    paths = sorted(ROOT.rglob("*.py"))
    known = {module_name(p) for p in paths}
    found = []
    for path in paths:
        importer = module_name(path)
        if importer in EXEMPT:
            continue
        layer = layer_of(importer)
        for imported in sorted(imported_modules(path, known)):
            other = layer_of(imported)
            if (
                RANKS[other] > RANKS[layer]
                or (RANKS[other] == RANKS[layer] and other != layer)
                or other in FORBIDDEN.get(layer, ())
            ):
                found.append(f"{importer} -> {imported}")
    return found


def test_every_module_has_a_layer() -> None:
    for path in ROOT.rglob("*.py"):
        layer_of(module_name(path))


def test_no_import_runs_against_the_layer_order() -> None:
    found = violations()
    for line in found:
        print(line)
    assert found == [], "imports against the layer order (see CONTRIBUTING.md):\n" + "\n".join(found)


def test_only_the_aiida_plugin_imports_aiida_core() -> None:
    """aiida-core is an optional extra (``process_comms[aiida]``): the core must import without it."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if module_name(path).startswith(f"{PACKAGE}.aiida"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [f"{module_name(path)} -> {name}" for name in names if name.split(".")[0] == "aiida"]
    assert found == [], "aiida-core imported outside process_comms/aiida:\n" + "\n".join(found)
