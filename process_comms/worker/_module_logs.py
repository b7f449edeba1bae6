"""Lines that a process's module logs (``logging.getLogger(__name__)``) while its run executes, kept in its record.

How a line is tied to its process: the process sets a context variable (process.py ``RUNNING``) at the start of
its run task (``_execute``); asyncio gives every task its own copy of the context, so the variable names
this process in its run and in the tasks and executor calls it starts (``run_in_executor`` is given a copy),
and in nothing else: another process's task, the communicator's loop and the worker's own threads see
``None``. A :class:`ProcessLogHandler` on the root logger, installed while a worker runs, reads it for each
record of INFO and above and adds the line to that process's record. The library's own loggers
(``process_comms.*``) are left out, among them the process's ``logger``, which keeps its lines itself
(process.py ``_RecordingLogger``). Only what the logging configuration lets through reaches the handler
(``process-comms worker --log-level``: INFO by default).
"""

from __future__ import annotations

import logging
import threading

from .process import RUNNING

__all__ = ["ProcessLogHandler", "install", "uninstall"]

#: Loggers whose lines never go to a record from here (the library's, and the process's own ``logger``).
_OWN_PREFIX = "process_comms."


class ProcessLogHandler(logging.Handler):
    """Adds each log line of INFO and above, logged inside a process's run, to that process's record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        ref = RUNNING.get()
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
