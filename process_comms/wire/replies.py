"""The reply rules that travel: reply keys, error replies, how a reply is read, the task envelope (no I/O).

Keys and precedence follow kiwipy 0.9 (cancelled > exception > result > pending); ``error_type`` is
our extra key, ignored by kiwipy peers, carrying the remote exception's type name; ``traceback`` (also
ignored by them) carries the formatted traceback of a process that excepted.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..errors import DecodeError, DuplicatePid, InvalidTask, ProcessKilled, RemoteError, TaskRejected

__all__ = [
    "RESULT_KEY",
    "EXCEPTION_KEY",
    "CANCELLED_KEY",
    "PENDING_KEY",
    "HOST_KEY",
    "ERROR_TYPE_KEY",
    "TRACEBACK_KEY",
    "MAX_TRACEBACK_CHARS",
    "bounded_traceback",
    "KILLED_TYPES",
    "REJECTED_TYPES",
    "exception_reply",
    "reply_outcome",
    "parse_task_envelope",
]

RESULT_KEY = "result"
EXCEPTION_KEY = "exception"
CANCELLED_KEY = "cancelled"
PENDING_KEY = "pending"
HOST_KEY = "host"
#: Extra reply key (ignored by kiwipy peers) carrying the remote exception's type name.
ERROR_TYPE_KEY = "error_type"
#: Extra reply key (ignored by kiwipy peers) carrying the remote exception's formatted traceback.
TRACEBACK_KEY = "traceback"
#: Longest traceback text sent in a reply (its last characters are kept: the innermost frames).
MAX_TRACEBACK_CHARS = 16_000

#: Remote error type names read as :class:`ProcessKilled`.
KILLED_TYPES = frozenset({"KilledError", "ProcessKilled"})
#: Remote error type names read as :class:`TaskRejected`.
REJECTED_TYPES = frozenset({"TaskRejected", "LoadError", "DecodeError", "InvalidTask"})


def bounded_traceback(text: str) -> str:
    """``text`` cut to its last :data:`MAX_TRACEBACK_CHARS` characters (the innermost frames)."""
    return text if len(text) <= MAX_TRACEBACK_CHARS else "...\n" + text[-MAX_TRACEBACK_CHARS:]


@runtime_checkable
class _RemoteTraceback(Protocol):
    """An error that carries a failed process's traceback (``errors.RemoteError`` and its kin)."""

    remote_traceback: str | None


def _traceback_of(exc: BaseException) -> str | None:
    """The traceback a reply carries: a failed process's (``RemoteError.remote_traceback``), nothing else
    (a handler's own failure or a refusal says what went wrong in its message)."""
    remote = exc.remote_traceback if isinstance(exc, _RemoteTraceback) else None
    return bounded_traceback(remote) if isinstance(remote, str) and remote else None


def exception_reply(exc: BaseException) -> dict[str, object]:
    """A reply carrying ``str(exc)`` (what kiwipy peers read) plus its type name and, for a process that
    excepted, its traceback (what we read)."""
    reply: dict[str, object]
    if isinstance(exc, RemoteError) and exc.remote_type:
        reply = {EXCEPTION_KEY: exc.message, ERROR_TYPE_KEY: exc.remote_type}
    else:
        reply = {EXCEPTION_KEY: str(exc) or type(exc).__name__, ERROR_TYPE_KEY: type(exc).__name__}
    text = _traceback_of(exc)
    if text is not None:
        reply[TRACEBACK_KEY] = text
    return reply


def reply_outcome(reply: object) -> tuple[bool, object]:
    """Interpret one reply: ``(False, None)`` for pending, ``(True, value)`` for a result; raise for errors.

    Precedence follows kiwipy: cancelled > exception > result > pending.
    """
    if not isinstance(reply, dict):
        raise DecodeError(f"reply is not a mapping but {type(reply).__name__}")
    if CANCELLED_KEY in reply:
        raise RemoteError(str(reply[CANCELLED_KEY] or "the remote handler was cancelled"), "CancelledError")
    if EXCEPTION_KEY in reply:
        message = str(reply[EXCEPTION_KEY])
        kind = reply.get(ERROR_TYPE_KEY)
        kind = kind if isinstance(kind, str) else None
        remote_tb = reply.get(TRACEBACK_KEY)
        remote_tb = remote_tb if isinstance(remote_tb, str) else None
        if kind in KILLED_TYPES:
            raise ProcessKilled(message, kind, remote_tb)
        if kind == DuplicatePid.__name__:  # a TaskRejected a caller may tell apart: the pid is taken
            raise DuplicatePid(message)
        if kind in REJECTED_TYPES:
            raise TaskRejected(f"{kind}: {message}")
        raise RemoteError(message, kind, remote_tb)
    if RESULT_KEY in reply:
        return True, reply[RESULT_KEY]
    if PENDING_KEY in reply:
        return False, None
    raise DecodeError(f"reply has none of result/exception/cancelled/pending: keys {sorted(map(str, reply))}")


def parse_task_envelope(decoded: object) -> tuple[object, bool]:
    """Split a decoded task body into ``(task, no_reply)``; raise :class:`InvalidTask` if it is not a pair."""
    if not isinstance(decoded, (list, tuple)) or len(decoded) != 2:
        raise InvalidTask(f"task envelope must be a pair (task, no_reply), got {type(decoded).__name__}")
    task, no_reply = decoded
    if not isinstance(no_reply, bool):
        raise InvalidTask(f"task envelope's no_reply must be a bool, got {type(no_reply).__name__}")
    return task, no_reply
