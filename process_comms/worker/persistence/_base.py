"""The plumpy ``Persister`` interface and the JSON rules every store shares, for checkpoints and for records.

State is stored as JSON text written by :class:`~process_comms.wire.codec.JsonCodec` (never pickled), so
a bundle must be a JSON-safe dict (UUIDs allowed) that survives a round trip unchanged.

A process record (docs/fleet.md, "Who answers for a process") is a JSON-safe dict written by the worker (see
:mod:`process_comms.worker.records`);
the store keeps its inputs once (they never change), the rest as one text, and a summary for listing: what a
summary holds, how a record is encoded and how a value that JSON cannot hold is kept as its ``repr`` are below.
"""

from __future__ import annotations

import abc
import math
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Protocol, TypeVar

from ...errors import DecodeError, EncodeError, PersistenceError
from ...wire.codec import JsonCodec
from ...wire.messages import Pid
from ...wire.types import TERMINAL_STATES

__all__ = [
    "MAX_BUNDLE_BYTES",
    "Bundle",
    "ClaimHolder",
    "PersistedCheckpoint",
    "Persister",
    "CUT_KEY",
    "SUMMARY_KEYS",
    "SUMMARY_ERROR_CHARS",
    "SUMMARY_PROGRESS_BYTES",
    "SUMMARY_STATUS_CHARS",
    "TERMINAL_STATE_NAMES",
    "RecordTexts",
    "bounded_progress",
    "decode_record",
    "decode_summary",
    "record_texts",
    "safe_value",
    "summary_of",
]

#: Largest bundle accepted (encoded size); checkpoints are not wire messages, so the limit is generous.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024

_codec = JsonCodec(max_bytes=MAX_BUNDLE_BYTES)
_P = TypeVar("_P", bound="Persister")


class PersistedCheckpoint(NamedTuple):
    """Names one stored checkpoint: the process id and the tag (``None`` for the untagged one)."""

    pid: Pid
    tag: str | None


class ClaimHolder(NamedTuple):
    """Who holds the claim on a pid: the owner, its liveness token (None: unknown), when the claim lapses by
    the owner's TTL and when it was last renewed (epoch seconds; None in rows written before claims had liveness)."""

    owner: str
    token: str | None
    expires_at: float
    renewed_at: float | None


class Bundle(dict):  # type: ignore[type-arg]
    """The saved state of a process: a plain JSON-safe dict (UUID values allowed)."""


def _encode(value: object, what: str) -> str:
    """Encode ``value`` to JSON text, refusing anything that would not come back equal."""
    try:
        text: str = _codec.encode(value).decode("utf-8")
        same = _codec.decode(text) == value
    except (EncodeError, DecodeError) as exc:
        raise PersistenceError(f"{what} is not JSON-safe: {exc}") from exc
    if not same:
        raise PersistenceError(f"{what} is not JSON-safe: it changes in a JSON round trip (tuples, non-str keys?)")
    return text


def _pid_key(pid: object) -> str:
    """Return the storage key of ``pid``: its JSON text, which keeps ``1``, ``"1"`` and UUIDs apart."""
    if type(pid) is uuid.UUID:  # the common pid: its text is known without a JSON round trip
        return f'{{"__uuid__":"{pid}"}}'
    key = _encode(pid, f"pid {pid!r}")
    if type(_codec.decode(key)) is not type(pid):
        raise PersistenceError(f"pid {pid!r} cannot be stored: use a str, int or uuid.UUID")
    return key


def _decode_pid(key: str) -> Pid:
    """The pid whose storage key is ``key``."""
    pid: Pid = _codec.decode(key)
    return pid


def _check_tag(tag: str | None) -> str:
    if tag is not None and not isinstance(tag, str):
        raise TypeError(f"tag must be a str or None, not {type(tag).__name__}")
    return tag or ""


def _missing(pid: Pid, tag: str | None) -> PersistenceError:
    return PersistenceError(f"no checkpoint for process {pid} (tag {tag!r})")


def _load(text: str | bytes) -> Bundle:
    try:
        return Bundle(_codec.decode(text))
    except DecodeError as exc:
        raise PersistenceError(f"stored checkpoint cannot be decoded: {exc}") from exc


def _bundle_text(bundle: object) -> str:
    if not isinstance(bundle, dict):
        raise PersistenceError(f"a checkpoint must be a dict, not {type(bundle).__name__}")
    return _encode(bundle, "checkpoint state")


# -- process records: the JSON rules of every store -----------------------------------------------------------
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


class _Process(Protocol):
    pid: Pid

    def save(self) -> Any: ...


class Persister(abc.ABC):
    """Saves and loads process checkpoints, keyed by process id and optional tag."""

    def save_checkpoint(self, process: _Process, tag: str | None = None) -> None:
        """Store ``process.save()`` as the checkpoint of ``process.pid`` under ``tag``."""
        self.save_bundle(process.pid, process.save(), tag)

    @abc.abstractmethod
    def save_bundle(self, pid: Pid, bundle: dict[str, object], tag: str | None = None) -> None:
        """Store ``bundle`` as the checkpoint of ``pid`` under ``tag``, replacing any previous one."""

    @abc.abstractmethod
    def load_checkpoint(self, pid: Pid, tag: str | None = None) -> Bundle:
        """Return an independent copy of the stored checkpoint; PersistenceError if there is none."""

    @abc.abstractmethod
    def get_checkpoints(self) -> list[PersistedCheckpoint]:
        """Return every stored checkpoint."""

    @abc.abstractmethod
    def get_process_checkpoints(self, pid: Pid) -> list[PersistedCheckpoint]:
        """Return the checkpoints stored for ``pid``."""

    @abc.abstractmethod
    def delete_checkpoint(self, pid: Pid, tag: str | None = None) -> None:
        """Delete one checkpoint; deleting a missing one is not an error."""

    @abc.abstractmethod
    def delete_process_checkpoints(self, pid: Pid) -> None:
        """Delete every checkpoint of ``pid``."""

    def claim(self, pid: Pid, owner: str, ttl: float) -> bool:
        """Take or renew the right to run ``pid`` for ``ttl`` seconds; False while another owner's claim is live.

        Workers sharing a store use it so that a redelivered task never starts a second copy of a process
        that still runs elsewhere (after a connection loss or a consumer timeout); a dead owner's claim expires.
        """
        return True

    def release(self, pid: Pid, owner: str) -> None:
        """Give up ``owner``'s claim on ``pid`` (no error if it holds none)."""

    # -- claims with liveness (RELIABILITY.md, "Faults": takeover); the defaults fall back on claim() ------------
    def try_claim(self, pid: Pid, owner: str, ttl: float, token: str | None = None) -> ClaimHolder | None:
        """Take or renew the claim on ``pid`` if it is free or ``owner``'s (None: ``owner`` holds it now, with
        ``token``, its liveness token); else leave it and return its holder. A lapsed claim is not taken here:
        the launcher decides that (:meth:`take_over`)."""
        return None if self.claim(pid, owner, ttl) else ClaimHolder("", None, math.inf, None)

    def take_over(self, pid: Pid, owner: str, ttl: float, token: str | None, holder: ClaimHolder) -> bool:
        """Take the claim on ``pid`` from ``holder`` as it was read: a compare-and-swap, False if the claim
        changed meanwhile (renewed, released, or taken by another worker first)."""
        return self.claim(pid, owner, ttl)

    def renew_claims(self, owner: str, ttl: float, pids: Iterable[Pid]) -> list[Pid]:
        """Renew every claim ``owner`` holds (in one statement where the store can); return those of ``pids``
        that ``owner`` no longer holds."""
        return [pid for pid in pids if not self.claim(pid, owner, ttl)]

    # -- process records (docs/fleet.md); a store without them keeps none, and says so ------------------------
    #: True for stores that keep process records (the memory and SQL stores do).
    keeps_records: bool = False

    def save_records(self, records: Sequence[dict[str, object]]) -> None:
        """Store (insert or replace) the process records given, in one batch; the inputs of a pid are kept
        from its first write."""

    def save_records_nowait(self, records: Sequence[dict[str, object]]) -> bool:
        """Store the records now if that cannot wait (on a lock, the server or the disk); False if it would.

        A writer on an event loop calls this first and hands the records to a thread only when it says False:
        a thread hop costs a busy worker as much as the write itself (docs/performance.md, "Process records").
        """
        return False

    def load_record(self, pid: Pid) -> dict[str, object] | None:
        """The record of ``pid`` (a JSON-safe dict), or None if there is none."""
        return None

    def list_records(
        self,
        state: str | None = None,
        limit: int = 100,
        since: float | None = None,
        class_name: str | None = None,
        before: float | None = None,
        *,
        states: Sequence[str] | None = None,
        label: str | None = None,
    ) -> list[dict[str, object]]:
        """Record summaries, newest first (by ``ctime``): at most ``limit``, filtered by state name (``state``,
        and any of ``states``), creation time (``since``; ``before``: created at or before it, for the next page;
        epoch seconds), class (``module:Name``) and label (a case-sensitive substring of the record's label)."""
        return []

    def prune_records(self, max_age: float, max_count: int) -> None:
        """Delete the records of ended processes not changed for ``max_age`` seconds, and those beyond the
        newest ``max_count`` records."""

    def delete_records(self, pids: Iterable[Pid]) -> None:
        """Delete the records of ``pids`` (no error for a pid without one)."""

    def close(self) -> None:
        """Release resources held by the persister."""

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
