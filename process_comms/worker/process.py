"""Processes: what a worker runs and a controller controls.

Subclass :class:`Process`, override ``run()`` (a coroutine, or a plain function run on a thread) and
return the outputs dict. The rules a controller can rely on:

* **pause** sets the paused flag at once and holds the process at its next *library* await point:
  ``await self.checkpoint()``, ``await self.sleep()`` or ``await self.pause_point()``;
* **kill** cancels the run at its next await point of any kind, so ``finally:`` blocks run, and
  answers once the run has ended; **force_kill** marks the process killed and answers at once;
* **checkpoint(**progress)** records progress (JSON-safe values) and saves it when the process has a
  persister; ``continue`` resumes from the last checkpoint with ``self.progress`` restored.

Every state transition is broadcast as ``state_changed.<from>.<to>`` (sender = pid) without ever
blocking the process's loop.

This module holds all of :class:`Process`, in sections:

* **states**: :class:`ProcessState` (its home is wire/types.py) and the two ways a run can end other than by
  returning (:class:`KilledError`, :class:`Suspended`);
* **the checkpoint bundle**: what :meth:`Process.save` writes and :meth:`Process.recreate_from` reads
  (:func:`bundle_of`, :func:`restore`), plain JSON-safe data (never pickle); ``!!meta`` names the class with
  the object loader's identifier, as plumpy's bundles do;
* **the record's history**: bounded (:func:`add_history`), a sleeping process's running/waiting back-and-forth
  folded into one entry, the oldest entries dropped past a count;
* **what a process runs with**: the checks of its messages (:func:`rpc_intent`) and its :class:`Runtime`;
* **the record**: :class:`Recorded` (what the record writer reads) and :class:`EndedRun` (what a gone
  route answers with);
* **the process**: :class:`Process`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from .. import defaults
from ..errors import PersistenceError, ProcessCommsError, ProcessKilled, ProcessLost, RemoteError
from ..transports.base import AsyncCommunicator, host_info
from ..transports.loop import run_on
from ..wire.messages import (
    FORCE_KILL_KEY,
    INTENT_KEY,
    LOST_TYPE,
    MESSAGE_TEXT_KEY,
    RECORD_TASK_ID_KEY,
    RELEASE_KEY,
    STATUS_RECORD_KEYS,
    Intent,
    ObjectLoader,
    Pid,
    get_object_loader,
    status_of_record,
    time_limit_reason,
    wire_bool,
    wire_text,
)
from ..wire.types import ProcessState  # re-exported: its home is wire/types.py
from ._link import CommLink
from .persistence._base import safe_value

__all__ = ["Process", "ProcessState", "KilledError", "Recorded", "Runtime", "Suspended"]

LOGGER = logging.getLogger(__name__)

#: Log lines a record keeps (the newest; the count of dropped ones is kept too).
MAX_LOG_LINES = 1000
#: Longest log line kept, in characters.
MAX_LOG_CHARS = 2000


# -- states: the two ways a run ends other than by returning (killed, suspended) ----------------------
class KilledError(ProcessKilled):
    """Raised to a waiter when the process it waits for was killed (reply type ``KilledError``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "KilledError")


class Suspended(ProcessCommsError):
    """The worker stopped running the process (graceful shutdown); its task was handed back."""


# -- the checkpoint bundle ----------------------------------------------------------------------------
META_KEY = "!!meta"


class Bundled(Protocol):
    """What a checkpoint keeps of a process (:class:`Process`)."""

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


# -- what a process answers and runs with -------------------------------------------------------------
def rpc_intent(msg: object) -> str:
    """The intent of a process RPC, after every check of it: the one home of the rules for a process's
    messages (a live process and an ended run's :class:`EndedRun` answer the same messages alike).

    Refused before anything changes: a text becomes the status that every checkpoint saves, and a flag
    read by truthiness would take 'false' for true ("Bad input" in RELIABILITY.md)."""
    if not isinstance(msg, dict) or INTENT_KEY not in msg:
        raise ValueError("malformed process message: expected a mapping with an 'intent'")
    intent = msg[INTENT_KEY]
    if intent == Intent.STATUS:
        return Intent.STATUS
    if intent not in (Intent.PLAY, Intent.PAUSE, Intent.KILL):
        raise ValueError(f"Unknown intent {intent!r}")
    if intent != Intent.PLAY:
        wire_text(msg.get(MESSAGE_TEXT_KEY), f"text of a {intent} message")
    if intent == Intent.PAUSE:
        wire_bool(msg, RELEASE_KEY, False)
    wire_bool(msg, FORCE_KILL_KEY, False)  # read for every intent but status, as a live process reads it
    return str(intent)


class RecordSink(Protocol):
    """Where a process's record changes go (records.py's ``RecordWriter``)."""

    def touch(self, proc: Recorded, urgent: bool = False) -> None: ...

    async def flush(self) -> None: ...


class Checkpointer(Protocol):
    """What a process needs of its persister: saving its checkpoint (persistence/_base.py)."""

    def save_checkpoint(self, process: Process, tag: str | None = None) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """What a process runs with, given to it as one object when it is attached (:meth:`Process.attach`):
    the loop it runs on, the link to the communicator that controls it, its persister, where its record goes,
    who holds it (``(worker id, liveness token)``, named in its record), and the future its launcher resolves
    once its route is gone (worker/launcher.py, Routes)."""

    loop: asyncio.AbstractEventLoop
    link: CommLink | None = None
    persister: Checkpointer | None = None
    recorder: RecordSink | None = None
    holder: tuple[str | None, str | None] = (None, None)
    route_gone: asyncio.Future[None] | None = None


#: The process whose run this context is (set as its run task starts, ``Process._execute``): asyncio gives every
#: task its own copy of the context, so it names this process in its run and in the tasks and executor calls
#: it starts, and nothing else. The handler of _module_logs.py reads it to keep the lines the process's
#: module logs in its record. A weak reference: contexts outlive the run (a timer or task started in it keeps
#: a copy), the process must not (tests/worker/test_records_in_flight.py checks that an ended process is let go).
RUNNING: contextvars.ContextVar[weakref.WeakMethod[Callable[[str, str], None]] | None] = contextvars.ContextVar(
    "process_comms_running", default=None
)


# -- the record: what the record writer reads, and what a gone route answers with ---------------------
class _RecordingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The process's ``logger``: logs as usual and keeps lines of INFO and above in the process's record."""

    def __init__(self, logger: logging.Logger, add_line: Callable[[str, str], None]) -> None:
        super().__init__(logger, {})
        self._add_line = add_line

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.INFO:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self._add_line(logging.getLevelName(level), text)
        super().log(level, msg, *args, **kwargs)


class Recorded:
    """What a :class:`Process` keeps for its record: its history, log lines and exception (the first half of a
    process; records.py writes it)."""

    pid: Pid
    ctime: float
    inputs: dict[str, Any]  # what authors read: their own values
    paused: bool
    status: str | None
    progress: dict[str, Any]
    outputs: dict[str, Any] | None
    persister: Checkpointer | None
    state: ProcessState
    label: str | None
    time_limit: float | None
    deadline: float | None

    def _init_record(self) -> None:
        self._history: list[dict[str, object]] = [{"event": "created", "time": self.ctime}]
        #: made with the first line: an empty bounded deque is 0.6 kB, and most processes log nothing
        self._log_lines: collections.deque[dict[str, object]] | None = None
        self._log_dropped = 0
        self._log_lock = threading.Lock()
        self._exception_info: dict[str, object] | None = None
        self._recorder: RecordSink | None = None
        self._logger: _RecordingLogger | None = None
        #: The correlation id of the task that launched this pid: its redelivery is no new launch (_pids.py).
        self._task_id: str | None = None
        #: ``(worker id, liveness token)`` of the worker that runs this process (set by its launcher): the
        #: fleet marks the record lost once that token is gone (records_service.py, ``sweep_lost``)
        self._holder: tuple[str | None, str | None] = (None, None)

    # -- what authors call ------------------------------------------------------------------------------
    def report(self, text: str) -> None:
        """Add a line to this process's log (``process-comms report PID`` shows it); safe from any thread."""
        self._add_log_line("REPORT", str(text))

    @property
    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger for this process: its INFO-and-above lines also go to the process's record."""
        if self._logger is None:
            name = f"process_comms.processes.{type(self).__module__}.{type(self).__qualname__}"
            self._logger = _RecordingLogger(logging.getLogger(name), self._add_log_line)
        return self._logger

    # -- what the runtime calls ----------------------------------------------------------------------------
    def _lines(self) -> collections.deque[dict[str, object]]:
        """The log lines, made on first use (under ``_log_lock``)."""
        if self._log_lines is None:
            self._log_lines = collections.deque(maxlen=MAX_LOG_LINES)
        return self._log_lines

    def _add_log_line(self, level: str, text: str) -> None:
        line = {"time": time.time(), "level": level, "text": text[:MAX_LOG_CHARS]}
        with self._log_lock:
            lines = self._lines()
            if len(lines) == lines.maxlen:
                self._log_dropped += 1
            lines.append(line)
        self._touch_record()

    def _note(self, event: str, message: str | None = None, urgent: bool = False) -> None:
        """Add ``event`` (a state name, ``paused``, ``played``...) to the history, with its time and message."""
        entry: dict[str, object] = {"event": event, "time": time.time()}
        if message is not None:
            entry["message"] = message
        self._history = add_history(self._history, entry)
        self._touch_record(urgent)

    def _touch_record(self, urgent: bool = False) -> None:
        if self._recorder is not None:
            self._recorder.touch(self, urgent)

    async def _flush_record(self) -> None:
        if self._recorder is not None:
            await self._recorder.flush()

    @property
    def exception_info(self) -> dict[str, object] | None:
        """The exception it ended with (type, message, traceback) as its record keeps it, else None."""
        return self._exception_info

    @property
    def task_id(self) -> str | None:
        """The correlation id of the task that launched this pid: its redelivery is no new launch (_pids.py)."""
        return self._task_id

    def restore_record(self, old: dict[str, object] | None, task_id: str | None = None) -> None:
        """Continue the history and log of an earlier record of this pid (a continued process); ``task_id``
        names the task that launches it now."""
        if task_id is not None:
            self._task_id = task_id
        if not isinstance(old, dict):
            return
        history = [h for h in cast("list[object]", old.get("history") or ()) if isinstance(h, dict)]
        if history:
            self._history = add_history(history, {"event": "continued", "time": time.time()})
        lines = old.get("log")
        if isinstance(lines, list):
            with self._log_lock:
                kept = self._lines()
                for line in reversed(lines[-MAX_LOG_LINES:]):
                    if len(kept) < MAX_LOG_LINES:
                        kept.appendleft(line)
                self._log_dropped += int(cast("int", old.get("log_dropped") or 0))
        exception = old.get("exception")
        if isinstance(exception, dict) and self._exception_info is None:
            self._exception_info = exception
        old_task, deadline = old.get(RECORD_TASK_ID_KEY), old.get("deadline")
        if self._task_id is None and isinstance(old_task, str):
            self._task_id = old_task
        if isinstance(deadline, (int, float)):  # the same launch again: its deadline holds
            self.label, self.time_limit = (
                cast("str | None", old.get("label")),
                cast("float | None", old.get("time_limit")),
            )
            self.deadline = deadline

    def record(self) -> dict[str, object]:
        """This process's record now: a JSON-safe dict (values JSON cannot hold are stored as their repr)."""
        proc: Process = self  # type: ignore[assignment]
        with self._log_lock:
            lines, dropped = list(self._log_lines or ()), self._log_dropped
        return {
            "pid": proc.pid,
            "class": f"{type(proc).__module__}:{type(proc).__qualname__}",
            "inputs": proc.inputs,
            "state_name": proc.state.value,
            "paused": proc.paused,
            "status": proc.status,
            "progress": dict(proc.progress),
            "outputs": proc.outputs,
            "exception": self._exception_info,
            "history": list(self._history),
            "worker": self._holder[0],
            "token": self._holder[1],
            "log": lines,
            "log_dropped": dropped,
            "host": host_info(),
            "persisted": proc.persister is not None,
            "ctime": proc.ctime,
            # an ended process's record has one mtime, its end: the same answer from it and from the store
            "mtime": self._history[-1]["time"] if proc.state.terminal else time.time(),
            RECORD_TASK_ID_KEY: self._task_id,
            "label": proc.label,
            "time_limit": proc.time_limit,
            "deadline": proc.deadline,
        }


class EndedRun:
    """What a process's route answers once the process has ended and its route is gone: the requests
    routed before the unbind (``transports/base.py``, ``RETIRED_RPC_SECONDS``) get the answers the
    process gave, from its final status, without the process itself. A communicator keeps up to 1,024
    of these for a minute; holding the processes, with their tasks, inputs, outputs and tracebacks, kept
    1,024 ended processes' memory in every busy worker (docs/performance.md, "Memory")."""

    __slots__ = ("_killed", "_status")

    def __init__(self, proc: Process) -> None:
        assert proc.state.terminal
        self._status = proc.status_info()
        self._killed = proc.state is ProcessState.KILLED

    def handle_rpc(self, _comm: object, msg: object) -> object:
        """Answer a process RPC as the process did when it ended."""
        # as Process: status as it ended; play True, pause (and release) False, kill True if it was killed
        intent = rpc_intent(msg)
        if intent == Intent.STATUS:
            return dict(self._status)
        if intent == Intent.PLAY:
            return True
        if intent == Intent.PAUSE:
            return False
        return self._killed


# -- the process --------------------------------------------------------------------------------------
class Process(Recorded):
    """Base class of remotely controllable processes; override :meth:`run`.

    Every process has a record (:meth:`record`), written by its worker; :meth:`report` and :attr:`logger`
    add lines to its log there.
    """

    def __init__(self, inputs: dict[str, Any] | None = None, pid: Pid | None = None, **kwargs: object) -> None:
        """Create a process with ``inputs`` (available as ``self.inputs``) and an optional ``pid``."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments {sorted(kwargs)}")
        self.inputs: dict[str, Any] = dict(inputs or {})
        #: The pid made here (a new UUID), or None if it was given: only a made one is known to be new.
        self.made_pid: uuid.UUID | None = None
        if pid is None:
            self.made_pid = pid = uuid.uuid4()
        self.pid: Pid = pid
        self.ctime = time.time()
        self.state = ProcessState.CREATED
        self.paused = False
        self.status: str | None = None
        self.progress: dict[str, Any] = {}
        self.outputs: dict[str, Any] | None = None
        self.exception: str | None = None
        self.killed_message: str | None = None
        #: A name to find this process by (``launch_process(label=...)``), kept in its record and checkpoint.
        self.label: str | None = None
        #: Its time limit in seconds and the absolute deadline (epoch seconds) it set: kept in the checkpoint,
        #: so a worker that continues it keeps the deadline (:meth:`set_limits`).
        self.time_limit: float | None = None
        self.deadline: float | None = None
        self._limit_kill: asyncio.Task[bool] | None = None
        self.persister: Checkpointer | None = None
        #: What it runs with, once attached by its launcher (:class:`Runtime`).
        self.runtime: Runtime | None = None
        self._link: CommLink | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        #: Whether the run's task has taken its first step (:meth:`_stop_run`).
        self._started = False
        self._play: asyncio.Event | None = None
        self._kill_requested: str | None = None
        self._suspending = False
        #: Why this process is being abandoned by its worker (:meth:`abandon`), else None.
        self._lost_reason: str | None = None
        self._done: asyncio.Future[dict[str, object]] | None = None
        self._final_broadcast: tuple[ProcessState, ProcessState] | None = None
        self._init_record()

    # -- what authors override and call -----------------------------------------------------------
    def run(self) -> Any:
        """The work: return the outputs dict (or None). May be ``async def``; a plain one runs on a thread."""
        raise NotImplementedError(f"{type(self).__name__} must override run()")

    async def checkpoint(self, **progress: object) -> None:
        """Record progress (JSON-safe values), save it if a persister is set, and honour pause/kill.

        A save that fails is logged at ERROR and the process keeps running (its stored checkpoint is the
        last one saved): a failed save must not end a process whose record then says it still runs.
        """
        self.progress.update(progress)
        self._touch_record()
        if self.persister is not None:
            try:
                await self._save_checkpoint()
            except Exception:
                LOGGER.exception(
                    "could not save a checkpoint of process %s: it keeps running, its stored checkpoint is older",
                    self.pid,
                )
        await self.pause_point()

    def checkpoint_blocking(self, **progress: object) -> None:
        """:meth:`checkpoint` for a plain (threaded) ``run``: blocks while paused, raises if killed."""
        assert self.loop is not None, "checkpoint_blocking() is for a run() on a worker thread"
        run_on(self.loop, functools.partial(self.checkpoint, **progress)).result()
        if self._kill_requested is not None:
            raise asyncio.CancelledError(self._kill_requested)

    async def pause_point(self) -> None:
        """An await point where a pause takes hold (until played) and a kill takes effect."""
        if self._play is not None and not self._play.is_set():
            await self._play.wait()
        await asyncio.sleep(0)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` in the ``waiting`` state, then honour pause."""
        self._transition(ProcessState.WAITING)
        try:
            await asyncio.sleep(seconds)
        finally:
            if not self.state.terminal and self._kill_requested is None:  # killed while waiting: waiting -> killed
                self._transition(ProcessState.RUNNING)
        await self.pause_point()

    # -- status and persistence ---------------------------------------------------------------------
    def status_info(self) -> dict[str, object]:
        """The status dict: plumpy's keys (``ctime``, ``paused``, ``process_string``, ``state``) and more.

        Once ended, the status its record gives (outputs or exception included, wire/messages.py): who asks
        gets the same answer whether the worker still holds the process or the fleet's record answers."""
        if self.state.terminal:
            # as the store keeps it: a value no codec can hold is its marker there and here; checked over what a
            # status shows, not the whole record (its inputs and history were encoded for nothing at every end)
            record = self.record()
            shown = {key: record[key] for key in STATUS_RECORD_KEYS if key in record}
            return {**status_of_record({**safe_value(shown), "live": False})}
        return {
            "ctime": self.ctime,
            "paused": self.paused,
            "process_string": str(self),
            "state": f"ProcessState.{self.state.name}",
            "state_name": self.state.value,
            "pid": self.pid,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "status": self.status,
            "progress": dict(self.progress),
            "host": host_info(),
            "label": self.label,
        }

    def __str__(self) -> str:
        return f"<{type(self).__name__}> (ProcessState.{self.state.name})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} state={self.state.value} paused={self.paused}>"

    def save(self, loader: ObjectLoader | None = None) -> dict[str, object]:
        """The checkpoint: plain, JSON-safe data, never pickle (:func:`._bundle.bundle_of`)."""
        return bundle_of(self, loader)

    @classmethod
    def recreate_from(cls, bundle: dict[str, object]) -> Process:
        """Rebuild a process from its checkpoint; it runs again from ``self.progress``."""
        proc = cls.__new__(cls)
        Process.__init__(
            proc, inputs=cast("dict[str, object] | None", bundle.get("inputs")), pid=cast("Pid | None", bundle["pid"])
        )
        restore(proc, bundle)
        proc.on_recreated()
        return proc

    def on_recreated(self) -> None:
        """Hook: called after :meth:`recreate_from` has restored the saved attributes."""

    # -- runtime ------------------------------------------------------------------------------------
    def _broadcast_state(self, old: ProcessState | None, new: ProcessState) -> None:
        link = self._link
        if link is None:
            return
        subject = f"state_changed.{old.value if old else None}.{new.value}"

        async def send() -> None:
            try:
                await link.core.broadcast_send(None, sender=self.pid, subject=subject)
            except Exception as exc:  # noqa: BLE001 - a lost notification must never fail the process
                LOGGER.warning("could not broadcast %s for %s: %s", subject, self.pid, exc)

        link.send(send)

    def _transition(self, new: ProcessState) -> None:
        old, self.state = self.state, new
        if old is not new:
            self._note(new.value, self.killed_message if new is ProcessState.KILLED else None, new.terminal)
            if new.terminal and self._task is not None and asyncio.current_task() is self._task:
                self._final_broadcast = (old, new)  # sent by _save_final, before the final checkpoint
            else:
                self._broadcast_state(old, new)

    def handle_rpc(self, _comm: object, msg: object) -> object:
        """RPC entry, called on the communicator's loop: status at once, the rest on the process's loop."""
        intent = rpc_intent(msg)
        if intent == Intent.STATUS:
            return self.status_info()
        assert isinstance(msg, dict)
        text = None if intent == Intent.PLAY else msg.get(MESSAGE_TEXT_KEY)
        if intent == Intent.PAUSE and wire_bool(msg, RELEASE_KEY, False):
            assert self.loop is not None
            return run_on(self.loop, self.release, text)
        return self.handle_intent(intent, text, wire_bool(msg, FORCE_KILL_KEY, False))

    _on_rpc = handle_rpc

    def handle_intent(self, intent: str, text: str | None, force: bool) -> concurrent.futures.Future[bool]:
        """Play, pause or kill on the process's loop (from any thread): the future of its answer."""
        assert self.loop is not None
        if intent == Intent.PLAY:
            return run_on(self.loop, self.play)
        if intent == Intent.PAUSE:
            return run_on(self.loop, self.pause, text)
        return run_on(self.loop, self.kill, text, force)

    async def play(self) -> bool:
        """Resume a paused process (True, also when it was not paused)."""
        if self.state.terminal:
            return True
        if self.paused:
            self._note("played")
        self.paused = False
        self.status = None
        if self._play is not None:
            self._play.set()
        return True

    async def pause(self, message: str | None = None) -> bool:
        """Pause at the next library await point: True (also if already paused), False if it has ended."""
        if self.state.terminal:
            return False
        self.paused = True
        self.status = message
        self._note("paused", message)
        if self._play is None:
            self._play = asyncio.Event()  # not set: the next pause point waits for a play
        else:
            self._play.clear()
        return True

    async def kill(self, message: str | None = None, force: bool = False) -> bool:
        """Kill: True if killed (now or before), False if it ended otherwise."""
        if self.state.terminal:
            return self.state is ProcessState.KILLED
        text = message or "killed"
        self._kill_requested = text
        if self._play is not None:
            self._play.set()
        task = self._task
        if task is None or task.done():
            self._finish_killed(text)
            return True
        self._stop_run(task, text)
        if force:
            self._finish_killed(text)
            return True
        try:
            await asyncio.shield(self._done) if self._done is not None else None
        except Exception:  # noqa: BLE001 - the kill outcome is the state, not the error
            pass
        return self.state is ProcessState.KILLED

    async def release(self, message: str | None = None) -> bool:
        """Pause, save the checkpoint and stop running here: the process holds no worker until it is
        continued (``play_process(pid, resume=True)``), on any worker, under the same pid."""
        if self.state.terminal:
            return False
        if self.persister is None:
            raise ValueError(f"process {self.pid} is not persisted: it can be paused but not released")
        await self.pause(message)
        try:  # saved before it stops: a release whose checkpoint fails leaves the process here, paused
            await self._save_checkpoint()
        except Exception as exc:
            LOGGER.exception("could not release process %s: its checkpoint was not saved", self.pid)
            raise PersistenceError(
                f"process {self.pid} is paused but was not released: its checkpoint could not be saved ({exc}); "
                "it keeps its worker"
            ) from None
        self._note("released", message)
        await self.suspend()
        gone = self.runtime.route_gone if self.runtime is not None else None
        if gone is not None:  # answered once its route is gone: who asks next finds no worker
            await asyncio.wait({gone}, timeout=defaults.RPC_TIMEOUT)
        return True

    async def suspend(self) -> None:
        """Stop running here without changing state, saving a checkpoint: another worker continues it."""
        task = self._task
        if self.state.terminal or task is None or task.done():
            return
        self._suspending = True
        self._note("suspended")
        self._stop_run(task, "suspended")
        await asyncio.wait({task}, timeout=10)

    async def abandon(self, reason: str) -> None:
        """Stop running here for good and end ``excepted`` as lost (:data:`~..wire.messages.LOST_TYPE`, saying
        ``reason``): what a stopping worker does with a process it cannot hand back (not persisted)."""
        if self.state.terminal:
            return
        self._lost_reason = reason
        task = self._task
        if task is None or task.done():
            self._finish_lost()
            return
        self._stop_run(task, "lost")
        await asyncio.wait({task}, timeout=10)

    def _stop_run(self, task: asyncio.Task[None], why: str) -> None:
        """Stop the run for a kill, a suspend or a loss already noted on the process. A task cancelled before its
        first step never runs its coroutine, so the run's own handlers would not end it (its ``wait_done`` would
        never resolve, nor a kill waiting on it): such a run sees the request at its first step instead."""
        if self._started:
            task.cancel(why)

    def _finish_lost(self) -> None:
        if self.state.terminal or self._lost_reason is None:
            return
        reason = self._lost_reason
        self.exception = f"{LOST_TYPE}: {reason}"
        self._exception_info = {"type": LOST_TYPE, "message": reason, "traceback": None}
        self.status = f"lost: {reason}"
        self._transition(ProcessState.EXCEPTED)
        if self._done is not None and not self._done.done():
            self._done.set_exception(ProcessLost(f"process {self.pid} was lost: {reason}"))
            self._done.exception()  # mark retrieved: nobody may be waiting

    def _finish_killed(self, text: str) -> None:
        if self.state.terminal:
            return
        self.killed_message = text
        self.status = text
        self._transition(ProcessState.KILLED)
        if self._done is not None and not self._done.done():
            self._done.set_exception(KilledError(text))
            self._done.exception()  # mark retrieved: nobody may be waiting

    def attach(
        self,
        runtime: Runtime | asyncio.AbstractEventLoop,
        communicator: AsyncCommunicator | None = None,
        comm_loop: asyncio.AbstractEventLoop | None = None,
        persister: Checkpointer | None = None,
    ) -> None:
        """Bind to what it runs with (called by the launcher): its loop, communicator, persister, recorder.

        The older form, ``attach(loop, communicator, comm_loop, persister)``, still binds loop, communicator
        and persister."""
        if not isinstance(runtime, Runtime):
            link = (
                CommLink(communicator, comm_loop, runtime)
                if communicator is not None and comm_loop is not None
                else None
            )
            runtime = Runtime(runtime, link, persister)
        self.runtime = runtime
        self.loop = runtime.loop
        self._link = runtime.link
        self.persister = runtime.persister
        self._recorder = runtime.recorder
        self._holder = runtime.holder

    def start(self) -> asyncio.Future[dict[str, object]]:
        """Start running on the current loop; the future resolves to the outputs or fails (killed/excepted)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._done = loop.create_future()
        # made when first paused: an asyncio.Event is 0.8 kB, and most processes are never paused (docs/performance.md)
        if self.paused:
            self._play = asyncio.Event()
        elif self._play is not None:
            self._play.set()
        if self.state.terminal:
            self._settle_terminal()
        else:
            self._broadcast_state(None, ProcessState.CREATED)
            self._started = False
            self._task = loop.create_task(self._execute(), name=f"process-{self.pid}")
            self._arm_deadline(loop)
        self._touch_record()
        return self._done

    # -- the time limit ---------------------------------------------------------------------------------
    def set_limits(self, seconds: float | None, label: str | None = None) -> None:
        """Give a new process its label and its time limit: a deadline of now plus ``seconds`` (wall clock,
        so it holds on another worker that continues it from its checkpoint)."""
        self.label = label
        if seconds is not None and self.deadline is None:  # a deadline restored from its record holds
            self.time_limit, self.deadline = seconds, time.time() + seconds

    def _arm_deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        """Kill at the deadline, paused or not (a paused process holds its worker's slot); the timer goes
        with the run (ended, suspended, released: the next worker arms it again from the checkpoint)."""
        if self.deadline is None or self._done is None:
            return
        handle = loop.call_later(max(0.0, self.deadline - time.time()), self._time_up)
        self._done.add_done_callback(lambda _: handle.cancel())

    def _time_up(self) -> None:
        if self.state.terminal or self.loop is None:
            return
        reason = time_limit_reason(self.time_limit or 0.0)
        LOGGER.info("process %s: %s, killing it", self.pid, reason)
        self._note("time limit", reason)
        self._limit_kill = self.loop.create_task(self.kill(reason), name=f"time-limit-{self.pid}")

    def _settle_terminal(self) -> None:
        assert self._done is not None
        if self.state is ProcessState.FINISHED:
            self._done.set_result(self.outputs or {})
        elif self.state is ProcessState.KILLED:
            self._done.set_exception(KilledError(self.status or "killed"))
        else:
            self._done.set_exception(RemoteError(self.exception or "the process excepted", "ProcessExcepted"))
        if self._done.done() and not self._done.cancelled():
            self._done.exception()  # mark retrieved: nobody may be waiting (nowait launches)

    async def _execute(self) -> None:
        assert self._done is not None
        self._started = True
        RUNNING.set(weakref.WeakMethod(self._add_log_line))  # this task's context: its module's lines go to its record
        try:
            if self._kill_requested is not None or self._suspending or self._lost_reason is not None:
                raise asyncio.CancelledError("stopped before its run began")  # _stop_run did not cancel it
            await self.pause_point()
            self._transition(ProcessState.RUNNING)
            if inspect.iscoroutinefunction(self.run):
                result = await self.run()
            else:
                in_context = functools.partial(contextvars.copy_context().run, self.run)
                result = await asyncio.get_running_loop().run_in_executor(None, in_context)
                if inspect.isawaitable(result):
                    result = await result
                if self._kill_requested is not None:
                    raise asyncio.CancelledError(self._kill_requested)
        except asyncio.CancelledError:
            if self._lost_reason is not None and self._kill_requested is None:
                self._finish_lost()
                await self._save_final()
                return
            if self._suspending and self._kill_requested is None:
                await self._save_final()  # state stays running: the next worker continues from here
                await self._flush_record()  # only an ended process is held after its run (worker/launcher.py, Routes)
                if not self._done.done():
                    self._done.set_exception(Suspended(f"process {self.pid} was suspended by its worker"))
                    self._done.exception()
                return
            self._finish_killed(self._kill_requested or "killed")
            await self._save_final()
            return
        except Exception as exc:  # noqa: BLE001 - an excepted process is a state, reported to waiters
            self.exception = f"{type(exc).__name__}: {exc}"
            text = traceback.format_exc()
            self._exception_info = {"type": type(exc).__name__, "message": str(exc), "traceback": text}
            self._transition(ProcessState.EXCEPTED)
            await self._save_final()
            if not self._done.done():
                self._done.set_exception(RemoteError(str(exc), type(exc).__name__, text))
                self._done.exception()  # mark retrieved: nobody may be waiting (nowait launches)
            return
        if self.state.terminal:  # force-killed meanwhile
            return
        self.outputs = dict(result) if isinstance(result, dict) else ({} if result is None else {"result": result})
        self._transition(ProcessState.FINISHED)
        await self._save_final()
        if not self._done.done():
            self._done.set_result(self.outputs)

    async def _save_checkpoint(self) -> None:
        if self.persister is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.persister.save_checkpoint, self)

    async def _save_final(self) -> None:
        # The record's write is not waited for: its launcher keeps an ended process's route bound until it
        # is written (worker/launcher.py, Routes), so who asks meanwhile is answered by the process.
        if self._final_broadcast is not None:
            self._broadcast_state(*self._final_broadcast)
            self._final_broadcast = None
        if self.persister is not None:
            try:
                await self._save_checkpoint()
            except Exception:
                LOGGER.exception("could not save the final checkpoint of %s", self.pid)

    def wait_done(self) -> asyncio.Future[dict[str, object]]:
        """The future of the outputs (after start())."""
        assert self._done is not None, "the process has not been started"
        return self._done
