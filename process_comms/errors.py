"""Every error the library raises, under one base class, named for what a caller may handle.

Our exception hierarchy (a second base in brackets is what kiwipy/plumpy callers catch)::

    ProcessCommsError
    ├── TimeoutError                 [builtins.TimeoutError]
    ├── ProcessUnreachable           [kiwipy.UnroutableError]
    │   └── ProcessLost
    ├── TaskRejected                 [kiwipy.TaskRejected]
    │   └── DuplicatePid
    ├── InvalidTask
    │   └── InvalidLaunchOption      [ValueError]
    ├── RemoteError                  [kiwipy.RemoteException]
    │   └── ProcessKilled
    ├── DecodeError                  [ValueError]
    ├── EncodeError                  [ValueError]
    ├── BrokerUnavailable            [ConnectionError]
    │   └── ConnectionLost
    ├── AccessRefused                [PermissionError]
    ├── CommunicatorClosed           [kiwipy.CommunicatorClosed]
    ├── DeadlockError                [RuntimeError]
    ├── InvalidPid                   [ValueError]
    ├── PersistenceError
    │   └── StoreUnavailable
    ├── LoadError                    [ImportError]
    ├── DuplicateSubscriber          [kiwipy.DuplicateSubscriberIdentifier]
    └── QueueEmpty                   [kiwipy.QueueEmpty]
"""

from __future__ import annotations

import builtins

import kiwipy

__all__ = [
    "ProcessCommsError",
    "TimeoutError",
    "ProcessUnreachable",
    "ProcessLost",
    "TaskRejected",
    "DuplicatePid",
    "InvalidTask",
    "InvalidLaunchOption",
    "RemoteError",
    "ProcessKilled",
    "DecodeError",
    "EncodeError",
    "BrokerUnavailable",
    "ConnectionLost",
    "AccessRefused",
    "CommunicatorClosed",
    "DeadlockError",
    "InvalidPid",
    "PersistenceError",
    "StoreUnavailable",
    "LoadError",
    "DuplicateSubscriber",
    "QueueEmpty",
]


class ProcessCommsError(Exception):
    """Base class of every error raised by process_comms."""


class TimeoutError(ProcessCommsError, builtins.TimeoutError):
    """A deadline passed before the answer came; the remote action may still happen."""


class ProcessUnreachable(ProcessCommsError, kiwipy.UnroutableError):
    """No subscriber holds this pid: no worker runs the process (or it has ended)."""


class ProcessLost(ProcessUnreachable):
    """No worker runs the process and none ever will: its worker stopped or died without handing it back
    (it was not persisted). Its record says ``excepted`` with an exception of type ``ProcessLost``."""


class TaskRejected(ProcessCommsError, kiwipy.TaskRejected):
    """The task was refused: unknown type, malformed body, or a class the worker does not allow."""


class DuplicatePid(TaskRejected):
    """A launch or create named a pid that already has a process (live, ended, or checkpointed): a pid is
    used once, so the task was refused and the existing record is untouched. Continue a persisted process
    with ``continue_process(pid)``; launch a new one without a pid, or with a new one."""


class InvalidTask(ProcessCommsError):
    """A task envelope or body that is not what the protocol says (replied as ``InvalidTask``)."""


class InvalidLaunchOption(InvalidTask, ValueError):
    """A launch option out of bounds: a label too long or not text, a time limit not a positive number."""


class RemoteError(ProcessCommsError, kiwipy.RemoteException):
    """The remote handler failed; keeps the remote exception's type name, message and (when the worker sent
    it) its formatted traceback as ``remote_traceback``."""

    def __init__(self, message: str, remote_type: str | None = None, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        if self.remote_type:
            return f"{self.remote_type}: {self.message}"
        return self.message


class ProcessKilled(RemoteError):
    """The process was killed before it produced outputs."""


class DecodeError(ProcessCommsError, ValueError):
    """A message body could not be decoded safely (malformed, or a tag that is refused)."""


class EncodeError(ProcessCommsError, ValueError):
    """A value cannot be encoded for the wire; nothing was sent."""


class BrokerUnavailable(ProcessCommsError, ConnectionError):
    """The broker could not be reached, or refused our credentials or vhost."""


class ConnectionLost(BrokerUnavailable):
    """The broker connection dropped while the call was in flight; its outcome is unknown."""


class AccessRefused(ProcessCommsError, PermissionError):
    """The broker refused an operation to this user: its text names the user, the operation and the resource."""


class CommunicatorClosed(ProcessCommsError, kiwipy.CommunicatorClosed):
    """The communicator or controller was closed; the call was not (or no longer) waited on."""


class DeadlockError(ProcessCommsError, RuntimeError):
    """Blocking on a future from the event-loop thread that must complete it would deadlock."""


class InvalidPid(ProcessCommsError, ValueError):
    """A pid that cannot be used as a routing address (wildcards, empty, too long)."""


class PersistenceError(ProcessCommsError):
    """A checkpoint could not be saved or loaded (missing pid or tag, store failure)."""


class StoreUnavailable(PersistenceError):
    """A store cannot be opened: no such file, no process records in it, or its server does not answer."""


class LoadError(ProcessCommsError, ImportError):
    """A class identifier could not be loaded, or is not allowed on this worker."""


class DuplicateSubscriber(ProcessCommsError, kiwipy.DuplicateSubscriberIdentifier):
    """A subscriber with this identifier is already registered on this communicator."""


class QueueEmpty(ProcessCommsError, kiwipy.QueueEmpty):
    """A task queue had no task to hand out (``next_task`` on an empty queue, as kiwipy's)."""
