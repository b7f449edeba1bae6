"""The protocol's data with types: a pid, a process's status, its record, a listing's summary, a worker's info.

These describe the dicts that travel (they stay plain dicts on the wire: a plumpy peer sends and reads the
same). Every key is optional to the type checker (``total=False``): a peer may leave one out, and a reader
uses ``.get`` where it must. ``tests/wire/test_types.py`` checks the keys against what the worker builds.
"""

from __future__ import annotations

import uuid
from typing import TypeAlias, TypedDict, Union

__all__ = [
    "ExceptionInfo",
    "HistoryEvent",
    "HostInfo",
    "Pid",
    "ProcessPage",
    "ProcessRecord",
    "ProcessStatus",
    "ProcessSummary",
    "SlotUse",
    "WorkerInfo",
]

#: A process id: what the codecs carry as a key (a UUID, an int or a string; plumpy's are UUIDs); its ``str()``
#: is its routing key.
Pid: TypeAlias = Union[uuid.UUID, int, str]


class ExceptionInfo(TypedDict, total=False):
    """Why a process excepted: the exception's type name, its message, its formatted traceback (or None)."""

    type: str
    message: str
    traceback: str | None


class HostInfo(TypedDict, total=False):
    """Who handles a process: the host name and the worker's OS pid (kiwipy's ``host`` reply entry)."""

    hostname: str
    pid: int


class HistoryEvent(TypedDict, total=False):
    """One event of a record's history: what happened, when (epoch seconds), and an optional message."""

    event: str
    time: float
    message: str


#: The status dict of a process, as a live process or its record answers it (wire/status.py).
ProcessStatus = TypedDict(
    "ProcessStatus",
    {
        "ctime": float | None,
        "mtime": float | None,
        "paused": bool,
        "process_string": str,
        "state": str,
        "state_name": str,
        "pid": Pid,
        "class": str,
        "status": str | None,
        "progress": dict[str, object],
        "host": HostInfo | None,
        "label": str | None,
        "record": bool,
        "live": bool,
        "outputs": dict[str, object] | None,
        "exception": ExceptionInfo | None,
        "source": str,
        "source_reason": str | None,
    },
    total=False,
)

#: A process's record as the fleet keeps it (worker/records.py builds it, the stores keep it).
ProcessRecord = TypedDict(
    "ProcessRecord",
    {
        "pid": Pid,
        "class": str,
        "inputs": dict[str, object],
        "state_name": str,
        "paused": bool,
        "status": str | None,
        "progress": dict[str, object],
        "outputs": dict[str, object] | None,
        "exception": ExceptionInfo | None,
        "history": list[HistoryEvent],
        "worker": str | None,
        "token": str | None,
        "log": list[dict[str, object]],
        "log_dropped": int,
        "host": HostInfo | None,
        "persisted": bool,
        "ctime": float,
        "mtime": float,
        "label": str | None,
        "time_limit": float | None,
        "deadline": float | None,
        "task_id": str | None,
        "live": bool,
        "source": str,
        "source_reason": str | None,
    },
    total=False,
)

#: One row of a process listing: a record's summary (worker/persistence/_records.py ``SUMMARY_KEYS``, plus
#: ``error`` and, from the fleet, ``live``).
ProcessSummary = TypedDict(
    "ProcessSummary",
    {
        "pid": Pid,
        "class": str,
        "state_name": str,
        "paused": bool,
        "status": str | None,
        "progress": dict[str, object],
        "host": HostInfo | None,
        "ctime": float,
        "mtime": float,
        "worker": str | None,
        "token": str | None,
        "label": str | None,
        "persisted": bool,
        "error": str | None,
        "live": bool,
    },
    total=False,
)


class _Source(TypedDict, total=False):
    source: str
    source_reason: str | None


class ProcessPage(_Source):
    """One page of a process listing: its summaries and the cursor of the next page (None: no more); from
    the store (no worker answered), ``source`` is ``"store"`` and ``source_reason`` says why."""

    processes: list[ProcessSummary]
    more: str | None


class SlotUse(TypedDict):
    """One task queue's slots on a worker: how many are used, how many there are (None: no limit)."""

    used: int
    total: int | None


class WorkerInfo(TypedDict, total=False):
    """What a worker answers a ``workers`` request with (worker/worker.py ``Worker.info``)."""

    worker: str
    host: str
    pid: int
    uptime: float
    processes: int
    consuming: bool
    queues: dict[str, bool]
    slots: dict[str, SlotUse]
