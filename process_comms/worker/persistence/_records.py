"""The JSON rules of process records (issue 14), shared by every store: what a summary holds, how a
record is encoded (never pickled) and how a value that JSON cannot hold is kept as its ``repr``.

A record is a JSON-safe dict written by the worker (see :mod:`process_comms.worker.records`); the store
keeps its inputs once (they never change), the rest as one text, and a summary for listing.
"""

from __future__ import annotations

from typing import Any

from ...errors import DecodeError, PersistenceError
from ...wire.types import TERMINAL_STATES
from ._base import _codec

__all__ = [
    "CUT_KEY",
    "SUMMARY_KEYS",
    "SUMMARY_PROGRESS_BYTES",
    "TERMINAL_STATE_NAMES",
    "RecordTexts",
    "bounded_progress",
    "decode_record",
    "decode_summary",
    "record_texts",
    "safe_value",
    "summary_of",
]

#: The keys of a record that ``list_records`` returns (a record summary); ``worker`` and ``token`` name its
#: holder, so the fleet finds the records of a gone holder by listing (records_service.py, ``sweep_lost``);
#: ``persisted`` tells a reader with no worker up a process that is lost from one whose task waits in the queue
#: (client/records.py).
SUMMARY_KEYS = (
    *("pid", "class", "state_name", "paused", "status", "progress", "host", "ctime", "mtime"),
    *("worker", "token", "label", "persisted"),
)
#: States after which a record never changes again: only these are pruned.
TERMINAL_STATE_NAMES = TERMINAL_STATES
#: Longest ``repr`` kept for a value that JSON cannot hold.
_MAX_REPR = 2000
#: Largest progress a summary carries, as JSON bytes: a listing holds many summaries (the whole progress is in
#: the record, ``process-comms show``); a larger one is cut to its keys that fit, plus :data:`CUT_KEY`.
SUMMARY_PROGRESS_BYTES = 1024
#: Longest status text a summary carries, in characters.
SUMMARY_STATUS_CHARS = 500
#: Longest ``error`` a summary carries (``"Type: message"`` of an excepted process), in characters.
SUMMARY_ERROR_CHARS = 300
#: The key a cut progress carries: how many bytes the whole progress has.
CUT_KEY = "!!cut"
#: How deep :func:`safe_value` looks for the one part of a value that JSON cannot hold.
_MAX_DEPTH = 8

#: ``(summary, record without inputs, inputs)`` as JSON texts.
RecordTexts = tuple[str, str, str]


def _text(value: object) -> str:
    return _codec.encode(value).decode("utf-8")


def _fits(value: object) -> bool:
    try:
        _text(value)
        return True
    except Exception:  # noqa: BLE001 - any failure (EncodeError, an int too long to print...) means it does not
        return False


def _repr(value: object) -> str:
    """``repr(value)``, bounded; a placeholder naming the type if even that raises (an int of 5,000 digits)."""
    try:
        return repr(value)[:_MAX_REPR]
    except Exception as exc:  # noqa: BLE001 - a repr may raise anything
        return f"<{type(value).__name__} that cannot be shown: {type(exc).__name__}>"


def safe_value(value: Any, depth: int = 0) -> Any:
    """``value`` if JSON can hold it; else the same shape with each part JSON cannot hold replaced by a marker
    ``{"!!unencodable": repr}``: a record is never lost to one value, nor are the values beside it."""
    if _fits(value):
        return value
    if depth < _MAX_DEPTH and isinstance(value, dict):
        return {k if isinstance(k, str) else _repr(k): safe_value(v, depth + 1) for k, v in value.items()}
    if depth < _MAX_DEPTH and isinstance(value, (list, tuple)):
        return [safe_value(v, depth + 1) for v in value]
    return {"!!unencodable": _repr(value)}


def bounded_progress(progress: Any) -> Any:
    """``progress`` as a summary carries it: whole if its JSON has at most :data:`SUMMARY_PROGRESS_BYTES`, else the
    keys that fit (in order) and ``{CUT_KEY: bytes of the whole}``."""
    if not isinstance(progress, dict) or not progress:
        return progress
    try:
        size = len(_text(progress).encode("utf-8"))
    except Exception:  # noqa: BLE001 - a live process's progress may hold anything
        progress = safe_value(progress)
        size = len(_text(progress).encode("utf-8"))
    if size <= SUMMARY_PROGRESS_BYTES:
        return progress
    kept: dict[str, object] = {}
    room = SUMMARY_PROGRESS_BYTES - 64  # the cut marker's own room
    for key, value in progress.items():
        cost = len(_text({key: value}).encode("utf-8"))
        if cost > room:
            continue  # a big value: the smaller ones after it may still fit
        kept[key] = value
        room -= cost
    kept[CUT_KEY] = size
    return kept


def summary_of(record: dict[str, object], encodable: bool = False) -> dict[str, object]:
    """The summary of a JSON-safe record (what a listing carries): :data:`SUMMARY_KEYS`, with the progress and
    the status bounded (a listing holds many summaries; ``show`` has the whole record). ``encodable``: the record
    is known to be JSON-safe (no check)."""
    summary = {key: record.get(key) for key in SUMMARY_KEYS}
    if not encodable and not _fits(summary):  # a live process's record: anything may be in it
        summary = {key: safe_value(value) for key, value in summary.items()}
    summary["progress"] = bounded_progress(summary["progress"])
    status = summary["status"]
    if isinstance(status, str) and len(status) > SUMMARY_STATUS_CHARS:
        summary["status"] = status[: SUMMARY_STATUS_CHARS - 3] + "..."
    summary["error"] = _summary_error(record.get("exception"))
    return summary


def _summary_error(exception: object) -> str | None:
    """``"Type: message"`` of a record's exception, at most :data:`SUMMARY_ERROR_CHARS` (the traceback stays in
    the record); None without one."""
    if not isinstance(exception, dict):
        return None
    text = ": ".join(str(part) for part in (exception.get("type"), exception.get("message")) if part)
    return text if len(text) <= SUMMARY_ERROR_CHARS else text[: SUMMARY_ERROR_CHARS - 3] + "..."


def record_texts(record: dict[str, object]) -> RecordTexts:
    """Encode a record for a store; values JSON cannot hold (or whose repr raises) are kept as a marker."""
    if not isinstance(record, dict) or "pid" not in record:
        raise PersistenceError("a process record must be a dict with a 'pid'")
    body = {k: v for k, v in record.items() if k != "inputs"}
    try:
        body_text = _text(body)
    except Exception:  # noqa: BLE001 - EncodeError, TypeError, ValueError (an int over 4,300 digits)...
        body = {k: safe_value(v) for k, v in body.items()}
        body_text = _text(body)
    inputs = record.get("inputs") or {}
    try:
        inputs_text = _text(inputs)
    except Exception:  # noqa: BLE001 - as above
        inputs_text = _text(safe_value(inputs))
    return _text(summary_of(body, encodable=True)), body_text, inputs_text


def decode_summary(text: str | bytes) -> dict[str, object]:
    """A stored summary, decoded."""
    try:
        value: dict[str, object] = _codec.decode(text)
    except DecodeError as exc:
        raise PersistenceError(f"stored record summary cannot be decoded: {exc}") from exc
    return value


def decode_record(body: str | bytes, inputs: str | bytes) -> dict[str, object]:
    """A stored record (its body and its inputs), decoded into one dict."""
    try:
        record: dict[str, object] = _codec.decode(body)
        record["inputs"] = _codec.decode(inputs)
    except DecodeError as exc:
        raise PersistenceError(f"stored record cannot be decoded: {exc}") from exc
    return record
