"""A process's checkpoint bundle: what :meth:`Process.save` writes and :meth:`Process.recreate_from` reads.

Plain, JSON-safe data (the persisters store it as JSON; never pickle). ``!!meta`` names the class with
the object loader's identifier, as plumpy's bundles do.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..wire.loaders import ObjectLoader, get_object_loader
from ..wire.messages import Pid
from ._state import ProcessState

__all__ = ["META_KEY", "Bundled", "bundle_of", "restore"]

META_KEY = "!!meta"


class Bundled(Protocol):
    """What a checkpoint keeps of a process (process.py's ``Process``)."""

    pid: Pid
    ctime: float
    inputs: dict[str, Any]
    state: ProcessState
    paused: bool
    status: str | None
    progress: dict[str, Any]
    outputs: dict[str, Any] | None
    exception: str | None
    label: str | None
    time_limit: float | None
    deadline: float | None


def bundle_of(proc: Bundled, loader: ObjectLoader | None = None) -> dict[str, Any]:
    """The checkpoint of ``proc``."""
    return {
        META_KEY: {"class_name": (loader or get_object_loader()).identify_object(type(proc))},
        "pid": proc.pid,
        "ctime": proc.ctime,
        "inputs": proc.inputs,
        "state": proc.state.value,
        "paused": proc.paused,
        "status": proc.status,
        "progress": proc.progress,
        "outputs": proc.outputs,
        "exception": proc.exception,
        "label": proc.label,
        "time_limit": proc.time_limit,
        "deadline": proc.deadline,
    }


def restore(proc: Bundled, bundle: dict[str, Any]) -> None:
    """Set the saved attributes of ``proc`` (made with ``inputs`` and ``pid`` already) from ``bundle``."""
    proc.ctime = float(bundle.get("ctime", proc.ctime))
    proc.progress = dict(bundle.get("progress") or {})
    proc.paused = bool(bundle.get("paused", False))
    proc.status = bundle.get("status")
    proc.state = ProcessState(bundle.get("state", "created"))
    proc.outputs = bundle.get("outputs")
    proc.exception = bundle.get("exception")
    proc.label = bundle.get("label")
    proc.time_limit, proc.deadline = bundle.get("time_limit"), bundle.get("deadline")  # absolute: the same here
    if not proc.state.terminal:
        proc.state = ProcessState.CREATED  # it runs again from its progress
