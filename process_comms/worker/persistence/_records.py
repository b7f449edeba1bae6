"""The JSON rules of process records (issue 14), shared by every store: what a summary holds, how a
record is encoded (never pickled) and how a value that JSON cannot hold is kept as its ``repr``.

A record is a JSON-safe dict written by the worker (see :mod:`process_comms.worker.records`); the store
keeps its inputs once (they never change), the rest as one text, and a summary for listing.
"""

from __future__ import annotations

from typing import Any

from ...errors import DecodeError, EncodeError, PersistenceError
from ._base import _codec

__all__ = ["SUMMARY_KEYS", "TERMINAL_STATE_NAMES", "RecordTexts", "decode_record", "decode_summary", "record_texts"]

#: The keys of a record that ``list_records`` returns (a record summary); ``worker`` and ``token`` name its
#: holder, so the fleet finds the records of a gone holder by listing (records_service.py, ``sweep_lost``).
SUMMARY_KEYS = (
    *("pid", "class", "state_name", "paused", "status", "progress", "host", "ctime", "mtime"),
    *("worker", "token"),
)
#: States after which a record never changes again: only these are pruned.
TERMINAL_STATE_NAMES = ("finished", "excepted", "killed")
#: Longest ``repr`` kept for a value that JSON cannot hold.
_MAX_REPR = 2000

#: ``(summary, record without inputs, inputs)`` as JSON texts.
RecordTexts = tuple[str, str, str]


def _text(value: Any) -> str:
    return _codec.encode(value).decode("utf-8")


def _safe(value: Any) -> Any:
    """``value`` if JSON can hold it, else a marker with its (bounded) repr: a record is never lost to one value."""
    try:
        _text(value)
        return value
    except (EncodeError, TypeError, ValueError):
        return {"!!unencodable": repr(value)[:_MAX_REPR]}


def record_texts(record: dict[str, Any]) -> RecordTexts:
    """Encode a record for a store; values JSON cannot hold are kept as their repr."""
    if not isinstance(record, dict) or "pid" not in record:
        raise PersistenceError("a process record must be a dict with a 'pid'")
    body = {k: v for k, v in record.items() if k != "inputs"}
    try:
        body_text = _text(body)
    except (EncodeError, TypeError, ValueError):
        body = {k: _safe(v) for k, v in body.items()}
        body_text = _text(body)
    summary = {k: body.get(k) for k in SUMMARY_KEYS}
    inputs = record.get("inputs") or {}
    try:
        inputs_text = _text(inputs)
    except (EncodeError, TypeError, ValueError):
        inputs_text = _text(_safe(inputs))
    return _text(summary), body_text, inputs_text


def decode_summary(text: str | bytes) -> dict[str, Any]:
    """A stored summary, decoded."""
    try:
        value: dict[str, Any] = _codec.decode(text)
    except DecodeError as exc:
        raise PersistenceError(f"stored record summary cannot be decoded: {exc}") from exc
    return value


def decode_record(body: str | bytes, inputs: str | bytes) -> dict[str, Any]:
    """A stored record (its body and its inputs), decoded into one dict."""
    try:
        record: dict[str, Any] = _codec.decode(body)
        record["inputs"] = _codec.decode(inputs)
    except DecodeError as exc:
        raise PersistenceError(f"stored record cannot be decoded: {exc}") from exc
    return record
