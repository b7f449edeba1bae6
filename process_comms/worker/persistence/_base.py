"""The plumpy ``Persister`` interface and the JSON rules every store shares.

State is stored as JSON text written by :class:`~process_comms.wire.codec.JsonCodec` (never pickled), so
a bundle must be a JSON-safe dict (UUIDs allowed) that survives a round trip unchanged.
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

__all__ = ["MAX_BUNDLE_BYTES", "Bundle", "ClaimHolder", "PersistedCheckpoint", "Persister"]

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
    the owner's TTL and when it was last renewed (epoch seconds; None in rows written before issue 15)."""

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

    # -- claims with liveness (issue 15, "Takeover in seconds"); the defaults fall back on claim() ------------
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

    # -- process records (issue 14); a store without them keeps none, and says so ------------------------
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
