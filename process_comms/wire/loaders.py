"""Object loaders: turn classes into ``"module:Name"`` identifiers and back, as plumpy's do."""

from __future__ import annotations

import abc
import importlib
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any, Protocol, cast

from ..errors import LoadError

__all__ = ["ObjectLoader", "DefaultObjectLoader", "AllowListLoader", "get_object_loader", "set_object_loader"]


class ObjectLoader(abc.ABC):
    """Identifies an object by a string and loads it back from that string."""

    @abc.abstractmethod
    def load_object(self, identifier: str) -> Any:
        """Load the object named by ``identifier``; raise :class:`LoadError` (a ``ValueError``-free ImportError)."""

    @abc.abstractmethod
    def identify_object(self, obj: object) -> str:
        """Return the identifier of ``obj``."""


def _split(identifier: object) -> tuple[str, str]:
    if not isinstance(identifier, str):
        raise LoadError(f"class identifier must be a string 'module:Name', not {type(identifier).__name__}")
    mod_name, sep, name = identifier.partition(":")
    if not sep or not mod_name or not name or ":" in name:
        raise LoadError(f"identifier {identifier!r} has an invalid format: expected 'module:Name'")
    return mod_name, name


#: When a loader of this Python process first had each module (epoch seconds): a class added to the module's
#: file later is not in the module a long-running worker holds, and its error says so.
_FIRST_LOADED: dict[str, float] = {}


def _import(mod_name: str) -> ModuleType:
    module = importlib.import_module(mod_name)
    _FIRST_LOADED.setdefault(mod_name, time.time())
    return module


def _missing(mod_name: str, name: str, part: str, identifier: str) -> LoadError:
    """The error for an attribute ``part`` that the loaded module does not have, with the likely reason."""
    where = f"object {name!r} from identifier {identifier!r} could not be loaded: module {mod_name!r} has no attribute"
    loaded = _FIRST_LOADED.get(mod_name)
    if loaded is None or part != name.split(".")[0]:
        return LoadError(f"{where} {part!r}")
    stamp = time.strftime("%H:%M:%S", time.localtime(loaded))
    return LoadError(
        f"{where} {part!r}: this process imported {mod_name!r} at {stamp} (or before) and keeps that version; "
        "if the class was added since, restart it to load new classes"
    )


class _Qualified(Protocol):
    __module__: str
    __qualname__: str


class DefaultObjectLoader(ObjectLoader):
    """Imports ``module`` and returns its attribute ``Name`` (dotted names walk attributes)."""

    def load_object(self, identifier: str) -> Any:
        mod_name, name = _split(identifier)
        try:
            module = _import(mod_name)
        except ImportError as exc:
            raise LoadError(f"module {mod_name!r} from identifier {identifier!r} could not be loaded: {exc}") from None
        obj: object = module
        for part in name.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise _missing(mod_name, name, part, identifier) from None
        return obj

    def identify_object(self, obj: object) -> str:
        if isinstance(obj, str):  # a name is sent as is: the client need not (and should not) import it
            _split(obj)
            return obj
        named = cast(_Qualified, obj)  # a class or a function; anything else fails here with AttributeError
        identifier = f"{named.__module__}:{named.__qualname__}"
        self.load_object(identifier)
        return identifier


class AllowListLoader(DefaultObjectLoader):
    """Loads only from allowed modules (a module allows its submodules), and never imports others."""

    def __init__(self, allowed_modules: Iterable[str]) -> None:
        self.allowed_modules = tuple(allowed_modules)

    def is_allowed(self, identifier: str) -> bool:
        mod_name, _ = _split(identifier)
        return any(mod_name == m or mod_name.startswith(m + ".") for m in self.allowed_modules)

    def check_modules(self) -> None:
        """Import every allowed module now; a :class:`LoadError` names the first that cannot be imported, and why.

        A worker calls it before it takes tasks: a typo in a module name would otherwise reject every task.
        """
        for mod_name in self.allowed_modules:
            try:
                _import(mod_name)
            except ModuleNotFoundError as exc:
                if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
                    raise LoadError(f"no module named {exc.name!r} (a typo, or not on sys.path?)") from None
                raise LoadError(f"module {mod_name!r} fails to import: {type(exc).__name__}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - any error of the module's own code is the reason to say
                raise LoadError(f"module {mod_name!r} fails to import: {type(exc).__name__}: {exc}") from None

    def load_object(self, identifier: str) -> Any:
        if not self.is_allowed(identifier):
            raise LoadError(
                f"{identifier!r} is not allowed on this worker: allowed modules are {list(self.allowed_modules)}"
            )
        return super().load_object(identifier)


_OBJECT_LOADER: ObjectLoader | None = None


def get_object_loader() -> ObjectLoader:
    """Return the process-wide default loader (a :class:`DefaultObjectLoader` unless one was set)."""
    global _OBJECT_LOADER
    if _OBJECT_LOADER is None:
        _OBJECT_LOADER = DefaultObjectLoader()
    return _OBJECT_LOADER


def set_object_loader(loader: ObjectLoader | None) -> None:
    """Replace the process-wide default loader (``None`` restores the default)."""
    global _OBJECT_LOADER
    _OBJECT_LOADER = loader
