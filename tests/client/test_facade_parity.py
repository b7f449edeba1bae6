"""The thread facade is a line per method over the asyncio controller: same names, same parameters.

httpcore fails CI when its sync face drifts from the async one; this is that guard here.
"""

from __future__ import annotations

import inspect
import re

from process_comms import RemoteProcessController, RemoteProcessThreadController

#: Facade-only names, each with its reason.
FACADE_ONLY = {
    "close": "both have it; the asyncio controller's is a coroutine, so it is compared apart",
    "communicator": "property",
    "rpc_timeout": "property (the core's attribute)",
    "task_timeout": "property (the core's attribute)",
}


def _public_coroutines(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.iscoroutinefunction)
        if not name.startswith("_") and name != "close"
    }


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member) and name not in FACADE_ONLY
    }


def _parameters(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_every_core_coroutine_has_a_facade_method_and_nothing_else() -> None:
    core, facade = _public_coroutines(RemoteProcessController), _public_methods(RemoteProcessThreadController)
    assert sorted(core) == sorted(facade)


def test_facade_methods_take_the_same_parameters_as_the_core() -> None:
    core, facade = _public_coroutines(RemoteProcessController), _public_methods(RemoteProcessThreadController)
    drift = {name: (_parameters(core[name]), _parameters(facade[name])) for name in core if name in facade}
    assert {name: pair for name, pair in drift.items() if pair[0] != pair[1]} == {}


def test_the_facade_holds_no_control_logic() -> None:
    """Each facade method is one statement: hand the core's coroutine function (and its arguments) to the loop
    thread."""
    for name in _public_methods(RemoteProcessThreadController):
        source = inspect.getsource(getattr(RemoteProcessThreadController, name))
        if name.endswith("_many"):  # {pid: future}: one facade call per pid (README, Controllers)
            assert "for pid in pids" in source and "self._core." not in source, (name, source)
            continue
        returns = [line for line in source.splitlines() if line.strip().startswith("return ")]
        # *_all go through _all: without answers_within they return None at once, as plumpy's do
        handed_over = ("self._communicator.submit(", "self._all(")
        assert len(returns) == 1 and any(call in returns[0] for call in handed_over), (name, source)
        assert source.count("self._core.") == 1 and re.search(rf"self\._core\.{name}\b", source), (name, source)
