"""What a process's status says, whoever answers it: the process while a worker holds it, its record after.

The one rule (docs/fleet.md, "Who answers for a process"): an ended process still held by its worker and
the record the fleet keeps of it give the same status dict, outputs and exception included, so an answer
does not depend on whether the worker has let go of the process yet. A process whose holder is gone
without handing it back ends as ``excepted`` with an exception of type :data:`LOST_TYPE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

from .types import UNENDED_STATES, ProcessStatus

__all__ = ["LOST_TYPE", "UNENDED_STATES", "is_lost", "lost_record", "status_of_record"]

#: The exception type of a record whose process was lost (raised to waiters as ``errors.ProcessLost``).
LOST_TYPE: Final = "ProcessLost"


def status_of_record(record: Mapping[str, object]) -> ProcessStatus:
    """The status dict of a record, as a live process answers it, plus ``outputs`` (finished) or
    ``exception`` (excepted: type, message, traceback); ``record`` is True and ``live`` says whether a
    worker runs the process now (False: it ended, or it is parked)."""
    state = str(record.get("state_name") or "")
    cls = str(record.get("class") or "")
    status: dict[str, object] = {
        "ctime": record.get("ctime"),
        "mtime": record.get("mtime"),
        "paused": bool(record.get("paused")),
        "process_string": f"<{cls.rpartition(':')[2] or cls}> (ProcessState.{state.upper()})",
        "state": f"ProcessState.{state.upper()}",
        "state_name": state,
        "pid": record.get("pid"),
        "class": cls,
        "status": record.get("status"),
        "progress": record.get("progress") or {},
        "host": record.get("host"),
        "label": record.get("label"),
        "record": True,
        "live": bool(record.get("live", False)),
    }
    if state == "finished":
        status["outputs"] = record.get("outputs")
    if record.get("exception") is not None:
        status["exception"] = record.get("exception")
    if record.get("source") is not None:  # read from the store: no worker answered
        status["source"], status["source_reason"] = record["source"], record.get("source_reason")
    return cast(ProcessStatus, status)


def is_lost(record_or_status: Mapping[str, object]) -> bool:
    """True if a record (or a status dict made from one) says its process was lost."""
    exception = record_or_status.get("exception")
    return (
        record_or_status.get("state_name") == "excepted"
        and isinstance(exception, dict)
        and exception.get("type") == LOST_TYPE
    )


def lost_record(record: Mapping[str, object], reason: str, now: float) -> dict[str, object]:
    """``record`` marked lost: ``excepted`` with a :data:`LOST_TYPE` exception saying ``reason``, the
    status ``lost: <reason>`` and a ``lost`` event in its history."""
    earlier = record.get("history")
    history = [*(earlier if isinstance(earlier, list) else []), {"event": "lost", "time": now, "message": reason}]
    exception = {"type": LOST_TYPE, "message": reason, "traceback": None}
    return {
        **record,
        "state_name": "excepted",
        "status": f"lost: {reason}",
        "exception": exception,
        "history": history,
        "mtime": now,
    }
