"""The public surface: plumpy.process_comms' names and key constants, and the import paths the README documents."""

from __future__ import annotations

import collections.abc
import importlib

import plumpy.process_comms
import pytest

import process_comms

PLUMPY_CONSTANTS = sorted(
    name for name in dir(plumpy.process_comms) if name.isupper() and name not in {"LOGGER", "TYPE_CHECKING"}
)


def test_plumpy_names_are_exported() -> None:
    missing = [name for name in plumpy.process_comms.__all__ if name not in process_comms.__all__]
    assert missing == []


@pytest.mark.parametrize("name", PLUMPY_CONSTANTS)
def test_plumpy_key_constant_has_the_same_value(name: str) -> None:
    assert name in process_comms.__all__
    ours = getattr(process_comms, name)
    if name == "PID_TYPE":  # plumpy spells it typing.Hashable, an alias of the ABC
        assert ours is collections.abc.Hashable
    else:
        assert ours == getattr(plumpy.process_comms, name)


def test_every_exported_name_resolves() -> None:
    unresolved = [name for name in process_comms.__all__ if not hasattr(process_comms, name)]
    assert unresolved == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("process_comms.messages", "process_comms.wire.messages"),
        ("process_comms.display", "process_comms.client.display"),
    ],
)
def test_documented_module_paths_keep_working(old: str, new: str) -> None:
    shim, home = importlib.import_module(old), importlib.import_module(new)
    assert shim.__all__ == home.__all__
    assert all(getattr(shim, name) is getattr(home, name) for name in home.__all__)
