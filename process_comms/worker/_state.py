"""What a process keeps, as plain data: its states, the two ways its run can end other than by returning
(killed, suspended), its checkpoint bundle (what :meth:`Process.save` writes and :meth:`Process.recreate_from`
reads) and its record's bounded state history.

A bundle is plain, JSON-safe data (the persisters store it as JSON; never pickle). ``!!meta`` names the class
with the object loader's identifier, as plumpy's bundles do. The history folds a sleeping process's
running/waiting back-and-forth into one entry, and drops the oldest entries past a count.
"""

from __future__ import annotations

from typing import Protocol, cast

from ..errors import ProcessCommsError, ProcessKilled
from ..wire.messages import ObjectLoader, Pid, get_object_loader
from ..wire.types import ProcessState  # re-exported: its home is wire/types.py

__all__ = [
    "CYCLE_EVENT",
    "META_KEY",
    "MAX_HISTORY",
    "Bundled",
    "KilledError",
    "ProcessState",
    "Suspended",
    "add_history",
    "bundle_of",
    "restore",
]


class KilledError(ProcessKilled):
    """Raised to a waiter when the process it waits for was killed (reply type ``KilledError``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "KilledError")


class Suspended(ProcessCommsError):
    """The worker stopped running the process (graceful shutdown); its task was handed back."""


# -- the checkpoint bundle ----------------------------------------------------------------------------
META_KEY = "!!meta"


class Bundled(Protocol):
    """What a checkpoint keeps of a process (process.py's ``Process``)."""

    pid: Pid
    ctime: float
    inputs: dict[str, object]
    state: ProcessState
    paused: bool
    status: str | None
    progress: dict[str, object]
    outputs: dict[str, object] | None
    exception: str | None
    label: str | None
    time_limit: float | None
    deadline: float | None


def bundle_of(proc: Bundled, loader: ObjectLoader | None = None) -> dict[str, object]:
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


def restore(proc: Bundled, bundle: dict[str, object]) -> None:
    """Set the saved attributes of ``proc`` (made with ``inputs`` and ``pid`` already) from ``bundle``."""
    # the bundle holds what bundle_of wrote (a persister stores it as JSON): its values have those types
    proc.ctime = float(cast("float", bundle.get("ctime", proc.ctime)))
    proc.progress = dict(cast("dict[str, object]", bundle.get("progress") or {}))
    proc.paused = bool(bundle.get("paused", False))
    proc.status = cast("str | None", bundle.get("status"))
    proc.state = ProcessState(bundle.get("state", "created"))
    proc.outputs = cast("dict[str, object] | None", bundle.get("outputs"))
    proc.exception = cast("str | None", bundle.get("exception"))
    proc.label = cast("str | None", bundle.get("label"))
    limits = cast("tuple[float | None, float | None]", (bundle.get("time_limit"), bundle.get("deadline")))
    proc.time_limit, proc.deadline = limits  # absolute: the same here
    if not proc.state.terminal:
        proc.state = ProcessState.CREATED  # it runs again from its progress


# -- the record's history -----------------------------------------------------------------------------
#: History entries a record keeps: the first (``created``) and the newest; the count of dropped ones is kept.
MAX_HISTORY = 200
#: Events whose back-and-forth (every ``sleep``) is folded into one entry with a count, first and last times.
_CYCLE_EVENTS = ("running", "waiting")
#: The event of that folded entry.
CYCLE_EVENT = "running/waiting"


def add_history(history: list[dict[str, object]], entry: dict[str, object]) -> list[dict[str, object]]:
    """``history`` with ``entry`` added, bounded: a running/waiting back-and-forth (every ``sleep`` adds a pair)
    is folded into one :data:`CYCLE_EVENT` entry (``count`` transitions, first ``time``, ``last`` time) before
    the newest entry, and past :data:`MAX_HISTORY` entries the oldest after the first are dropped (counted in
    the first entry's ``dropped``). Mutates and returns ``history``."""
    event, last = entry.get("event"), history[-1] if history else None
    if (
        event in _CYCLE_EVENTS
        and "message" not in entry
        and last is not None
        and last.get("event") in _CYCLE_EVENTS
        and last.get("event") != event
        and "message" not in last
        and len(history) >= 2
    ):
        before = history[-2]
        if before.get("event") == CYCLE_EVENT:  # one more turn of the cycle: fold ``last`` into it
            before["count"] = int(cast("int", before.get("count") or 0)) + 1
            before["last"] = last.get("time")
            history[-1] = entry
            return history
        if before.get("event") == event and "message" not in before:  # event, other, event: a cycle starts
            history[-1] = {"event": CYCLE_EVENT, "count": 1, "time": last.get("time"), "last": last.get("time")}
    history.append(entry)
    if len(history) > MAX_HISTORY:
        drop = len(history) - MAX_HISTORY
        first = dict(history[0])
        first["dropped"] = int(cast("int", first.get("dropped") or 0)) + drop
        history[:] = [first, *history[1 + drop :]]
    return history
