"""The protocol's vocabulary: a process's states, the names both sides spell alike, and the data with types
(a pid, a process's status, its record, a listing's summary, a worker's info).

The state values are the strings plumpy 0.26's ``plumpy.ProcessState`` carries (``src/plumpy/base/state_machine.py``
and ``src/plumpy/process_states.py`` in https://github.com/aiidateam/plumpy), so a state travels as the same
bytes whichever side sends it. The dicts stay plain dicts on the wire (a plumpy peer sends and reads the same):
every key is optional to the type checker (``total=False``), a peer may leave one out, and a reader uses ``.get``
where it must. ``tests/wire/test_types.py`` compares the states with plumpy's and checks the keys against what
the worker builds.
"""

from __future__ import annotations

import enum
import uuid
from typing import Final, TypeAlias, TypedDict, Union

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_QUEUE",
    "TERMINAL_STATES",
    "UNENDED_STATES",
    "WORKERS_SUBJECT",
    "ProcessState",
    "is_terminal",
    "queue_name",
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


# -- a process's states, named as plumpy names them: the one home of the state names ---------------------------
class ProcessState(str, enum.Enum):
    """A process's state; a ``str`` so that its value is what travels (``ProcessState.RUNNING == "running"``)."""

    CREATED = "created"
    RUNNING = "running"
    WAITING = "waiting"
    FINISHED = "finished"
    EXCEPTED = "excepted"
    KILLED = "killed"

    def __str__(self) -> str:  # as a plain Enum's, on every Python (3.10 formats a str mix-in by its value)
        return f"ProcessState.{self.name}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @property
    def terminal(self) -> bool:
        """True for finished, excepted and killed."""
        return self in _TERMINAL_MEMBERS


# asked on every step of every process: a tuple made once is a tenth of the cost of naming the three members
# through the enum class on each call (22 ns against 218 ns, timeit)
_TERMINAL_MEMBERS: Final = (ProcessState.FINISHED, ProcessState.EXCEPTED, ProcessState.KILLED)


#: Process states after which nothing more happens.
TERMINAL_STATES: Final = (ProcessState.FINISHED.value, ProcessState.EXCEPTED.value, ProcessState.KILLED.value)
#: The states of a process that has not ended (someone must hold it, or it is lost or parked).
UNENDED_STATES: Final = (ProcessState.CREATED.value, ProcessState.RUNNING.value, ProcessState.WAITING.value)
#: What ``--active`` means: the states of a process that has not ended.
ACTIVE_STATES: Final = UNENDED_STATES


def is_terminal(state: str | None) -> bool:
    """True if ``state`` (a short state name such as ``finished``) is one after which nothing happens."""
    return state in TERMINAL_STATES


# -- the names both sides of the protocol must spell alike: broadcast subjects and task queue names ---------------
#: The subject of the ``workers`` broadcast request (client/controller.py sends it, worker/worker.py answers it).
WORKERS_SUBJECT: Final = "workers"
#: The name callers give for the installation's default task queue (as ``launch_process(queue=...)`` takes it).
DEFAULT_QUEUE: Final = "default"


def queue_name(task_queue: str, queue: str | None) -> str:
    """The broker's name of task queue ``queue`` (None or ``default``: the default task queue itself)."""
    if queue is None or queue == DEFAULT_QUEUE:
        return task_queue
    if not queue or any(ch in queue for ch in "#*") or len(queue.encode()) > 200:
        raise ValueError(f"invalid task queue name {queue!r}: use letters, digits, '-', '_' or '.'")
    return f"{task_queue}.{queue}"


# -- the data with types -----------------------------------------------------------------------------------------
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

#: One row of a process listing: a record's summary (worker/persistence/_base.py ``SUMMARY_KEYS``, plus
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
