"""Lines that a process's module logs (``logging.getLogger(__name__)``) while its run executes, kept in its record.

How a line is tied to its process: :func:`running` sets a context variable at the start of the process's run
task (process.py ``_execute``); asyncio gives every task its own copy of the context, so the variable names
this process in its run and in the tasks and executor calls it starts (``run_in_executor`` is given a copy),
and in nothing else: another process's task, the communicator's loop and the worker's own threads see
``None``. A :class:`ProcessLogHandler` on the root logger, installed while a worker runs, reads it for each
record of INFO and above and adds the line to that process's record. The library's own loggers
(``process_comms.*``) are left out, among them the process's ``logger``, which keeps its lines itself
(records.py ``_RecordingLogger``). Only what the logging configuration lets through reaches the handler
(``process-comms worker --log-level``: INFO by default).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Callable

__all__ = ["ProcessLogHandler", "install", "running", "uninstall"]

#: A weak reference: contexts outlive the run (a timer or task started in it keeps a copy), the process must not
#: (tests/worker/test_records_in_flight.py checks that an ended process is let go).
_RUNNING: contextvars.ContextVar[weakref.WeakMethod[Callable[[str, str], None]] | None] = contextvars.ContextVar(
    "process_comms_running", default=None
)
#: Loggers whose lines never go to a record from here (the library's, and the process's own ``logger``).
_OWN_PREFIX = "process_comms."


def running(add_line: Callable[[str, str], None]) -> None:
    """Mark the current context (a process's run task) as running the process whose ``add_line(level, text)``
    (a bound method: held weakly) keeps its record's log lines."""
    _RUNNING.set(weakref.WeakMethod(add_line))


class ProcessLogHandler(logging.Handler):
    """Adds each log line of INFO and above, logged inside a process's run, to that process's record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        ref = _RUNNING.get()
        add_line = None if ref is None else ref()
        if add_line is None or record.name.startswith(_OWN_PREFIX) or record.name == "process_comms":
            return
        try:
            add_line(record.levelname, record.getMessage())
        except Exception:  # noqa: BLE001 - a bad format string is logging's to report, as for any handler
            self.handleError(record)


_lock = threading.Lock()
_handler: ProcessLogHandler | None = None
_users = 0


def install() -> None:
    """Put the handler on the root logger (once, however many workers run in this Python process)."""
    global _handler, _users
    with _lock:
        _users += 1
        if _handler is None:
            _handler = ProcessLogHandler()
            logging.getLogger().addHandler(_handler)


def uninstall() -> None:
    """Undo one :func:`install`; the last one takes the handler off the root logger."""
    global _handler, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and _handler is not None:
            logging.getLogger().removeHandler(_handler)
            _handler = None
