"""The reply rules that travel: reply keys, error replies, how a reply is read, the task envelope (no I/O).

Keys and precedence follow kiwipy 0.9 (cancelled > exception > result > pending); ``error_type`` is
our extra key, ignored by kiwipy peers, carrying the remote exception's type name.
"""

from __future__ import annotations

from typing import Any

from ..errors import DecodeError, InvalidTask, ProcessKilled, RemoteError, TaskRejected

__all__ = [
    "RESULT_KEY",
    "EXCEPTION_KEY",
    "CANCELLED_KEY",
    "PENDING_KEY",
    "HOST_KEY",
    "ERROR_TYPE_KEY",
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

#: Remote error type names read as :class:`ProcessKilled`.
KILLED_TYPES = frozenset({"KilledError", "ProcessKilled"})
#: Remote error type names read as :class:`TaskRejected`.
REJECTED_TYPES = frozenset({"TaskRejected", "LoadError", "DecodeError", "InvalidTask"})


def exception_reply(exc: BaseException) -> dict[str, Any]:
    """A reply carrying ``str(exc)`` (what kiwipy peers read) plus its type name (what we read)."""
    if isinstance(exc, RemoteError) and exc.remote_type:
        return {EXCEPTION_KEY: exc.message, ERROR_TYPE_KEY: exc.remote_type}
    return {EXCEPTION_KEY: str(exc) or type(exc).__name__, ERROR_TYPE_KEY: type(exc).__name__}


def reply_outcome(reply: Any) -> tuple[bool, Any]:
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
        if kind in KILLED_TYPES:
            raise ProcessKilled(message, kind)
        if kind in REJECTED_TYPES:
            raise TaskRejected(f"{kind}: {message}")
        raise RemoteError(message, kind)
    if RESULT_KEY in reply:
        return True, reply[RESULT_KEY]
    if PENDING_KEY in reply:
        return False, None
    raise DecodeError(f"reply has none of result/exception/cancelled/pending: keys {sorted(map(str, reply))}")


def parse_task_envelope(decoded: Any) -> tuple[Any, bool]:
    """Split a decoded task body into ``(task, no_reply)``; raise :class:`InvalidTask` if it is not a pair."""
    if not isinstance(decoded, (list, tuple)) or len(decoded) != 2:
        raise InvalidTask(f"task envelope must be a pair (task, no_reply), got {type(decoded).__name__}")
    task, no_reply = decoded
    if not isinstance(no_reply, bool):
        raise InvalidTask(f"task envelope's no_reply must be a bool, got {type(no_reply).__name__}")
    return task, no_reply
