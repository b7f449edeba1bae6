"""Checkpoint persistence for processes: the plumpy ``Persister`` interface, in memory or in SQL.

State is stored as JSON text written by :class:`~process_comms.codec.JsonCodec` (never pickled), so a
bundle must be a JSON-safe dict (UUIDs allowed) that survives a round trip unchanged.
"""

from __future__ import annotations

import abc
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, NamedTuple, Protocol, TypeVar

from ..errors import DecodeError, EncodeError, PersistenceError
from ..urls import mask_url
from ..wire.codec import JsonCodec
from ..wire.messages import Pid

__all__ = [
    "DEFAULT_TABLE",
    "Bundle",
    "InMemoryPersister",
    "PersistedCheckpoint",
    "Persister",
    "SqlPersister",
    "get_persister",
]

#: Table used by :class:`SqlPersister` unless another is named.
DEFAULT_TABLE = "process_comms_checkpoints"
#: Largest bundle accepted (encoded size); checkpoints are not wire messages, so the limit is generous.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024

_codec = JsonCodec(max_bytes=MAX_BUNDLE_BYTES)
_P = TypeVar("_P", bound="Persister")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PersistedCheckpoint(NamedTuple):
    """Names one stored checkpoint: the process id and the tag (``None`` for the untagged one)."""

    pid: Pid
    tag: str | None


class Bundle(dict):  # type: ignore[type-arg]
    """The saved state of a process: a plain JSON-safe dict (UUID values allowed)."""


def _encode(value: Any, what: str) -> str:
    """Encode ``value`` to JSON text, refusing anything that would not come back equal."""
    try:
        text: str = _codec.encode(value).decode("utf-8")
        same = _codec.decode(text) == value
    except (EncodeError, DecodeError) as exc:
        raise PersistenceError(f"{what} is not JSON-safe: {exc}") from exc
    if not same:
        raise PersistenceError(f"{what} is not JSON-safe: it changes in a JSON round trip (tuples, non-str keys?)")
    return text


def _pid_key(pid: Pid) -> str:
    """Return the storage key of ``pid``: its JSON text, which keeps ``1``, ``"1"`` and UUIDs apart."""
    key = _encode(pid, f"pid {pid!r}")
    if type(_codec.decode(key)) is not type(pid):
        raise PersistenceError(f"pid {pid!r} cannot be stored: use a str, int or uuid.UUID")
    return key


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


class _Process(Protocol):
    pid: Pid

    def save(self) -> Any: ...


class Persister(abc.ABC):
    """Saves and loads process checkpoints, keyed by process id and optional tag."""

    def save_checkpoint(self, process: _Process, tag: str | None = None) -> None:
        """Store ``process.save()`` as the checkpoint of ``process.pid`` under ``tag``."""
        self.save_bundle(process.pid, process.save(), tag)

    @abc.abstractmethod
    def save_bundle(self, pid: Pid, bundle: dict[str, Any], tag: str | None = None) -> None:
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

    def close(self) -> None:
        """Release resources held by the persister."""

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _bundle_text(bundle: Any) -> str:
    if not isinstance(bundle, dict):
        raise PersistenceError(f"a checkpoint must be a dict, not {type(bundle).__name__}")
    return _encode(bundle, "checkpoint state")


class InMemoryPersister(Persister):
    """Keeps checkpoints as JSON text in a dict; thread-safe, lost when the object goes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: dict[tuple[str, str], str] = {}
        self._claims: dict[str, tuple[str, float]] = {}

    def claim(self, pid: Pid, owner: str, ttl: float) -> bool:
        """Claims held in memory: they coordinate the workers of one Python process."""
        key, now = _pid_key(pid), time.time()
        with self._lock:
            holder = self._claims.get(key)
            if holder is not None and holder[0] != owner and holder[1] > now:
                return False
            self._claims[key] = (owner, now + ttl)
            return True

    def release(self, pid: Pid, owner: str) -> None:
        """Drop ``owner``'s claim on ``pid``."""
        key = _pid_key(pid)
        with self._lock:
            if self._claims.get(key, ("", 0.0))[0] == owner:
                del self._claims[key]

    def save_bundle(self, pid: Pid, bundle: dict[str, Any], tag: str | None = None) -> None:
        """Store a JSON copy of ``bundle`` for ``pid`` under ``tag``."""
        key, text = (_pid_key(pid), _check_tag(tag)), _bundle_text(bundle)
        with self._lock:
            self._store[key] = text

    def load_checkpoint(self, pid: Pid, tag: str | None = None) -> Bundle:
        """Return a fresh copy of the checkpoint of ``pid`` under ``tag``."""
        key = (_pid_key(pid), _check_tag(tag))
        with self._lock:
            text = self._store.get(key)
        if text is None:
            raise _missing(pid, tag)
        return _load(text)

    def _list(self, pid_key: str | None) -> list[PersistedCheckpoint]:
        with self._lock:
            keys = sorted(self._store)
        return [PersistedCheckpoint(_codec.decode(k), t or None) for k, t in keys if pid_key in (None, k)]

    def get_checkpoints(self) -> list[PersistedCheckpoint]:
        """Return every stored checkpoint."""
        return self._list(None)

    def get_process_checkpoints(self, pid: Pid) -> list[PersistedCheckpoint]:
        """Return the checkpoints stored for ``pid``."""
        return self._list(_pid_key(pid))

    def delete_checkpoint(self, pid: Pid, tag: str | None = None) -> None:
        """Delete one checkpoint if present."""
        key = (_pid_key(pid), _check_tag(tag))
        with self._lock:
            self._store.pop(key, None)

    def delete_process_checkpoints(self, pid: Pid) -> None:
        """Delete every checkpoint of ``pid``."""
        pid_key = _pid_key(pid)
        with self._lock:
            for key in [k for k in self._store if k[0] == pid_key]:
                del self._store[key]

    def __repr__(self) -> str:
        return "InMemoryPersister()"


class SqlPersister(Persister):
    """Stores checkpoints in one SQL table: ``sqlite:///file.db``, ``sqlite://`` or ``postgresql://...``."""

    def __init__(self, url: str, table: str = DEFAULT_TABLE, busy_timeout: float = 30.0) -> None:
        if not _IDENTIFIER.match(table):
            raise ValueError(f"invalid table name {table!r}: use letters, digits and underscores")
        self.url, self.table = url, table
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._errors: tuple[type[Exception], ...]
        scheme = url.partition(":")[0].lower()
        if scheme == "sqlite":
            self._path, self._errors, self._ph = self._sqlite_path(url), (sqlite3.Error,), "?"
            self._timestamp_type = "TEXT"
        elif scheme in ("postgresql", "postgres"):
            import psycopg

            self._psycopg, self._errors, self._ph = psycopg, (psycopg.Error,), "%s"
            self._timestamp_type = "TIMESTAMPTZ"
        else:
            raise ValueError(
                f"unknown persister URL scheme {scheme!r} in {mask_url(url)!r}: "
                "use sqlite:///path.db, sqlite://, postgresql://user@host:port/db or memory://"
            )
        self._closed = False
        with self._lock:
            self._connect()

    @staticmethod
    def _sqlite_path(url: str) -> str:
        if not url.lower().startswith("sqlite://"):
            raise ValueError(f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
        rest = url[len("sqlite://") :]
        if rest in ("", "/", "/:memory:"):
            return ":memory:"
        if not rest.startswith("/"):
            raise ValueError(f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db")
        return rest[1:]

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL; that switch skips the busy handler, so retry it until the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # back off while another process initialises the file
        conn.execute("PRAGMA synchronous = NORMAL")

    def _connect(self) -> Any:
        """Open the connection and create the table; called with the lock held."""
        ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (pid_key TEXT NOT NULL, tag TEXT NOT NULL DEFAULT '', "
            f"pid_json TEXT NOT NULL, bundle TEXT NOT NULL, "
            f"updated_at {self._timestamp_type} NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (pid_key, tag))"
        )
        claims_ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.table}_claims (pid_key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            f"expires_at DOUBLE PRECISION NOT NULL)"
        )
        conn: Any = None
        try:
            if self._ph == "?":
                conn = sqlite3.connect(
                    self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                if self._path != ":memory:":
                    self._enable_wal(conn)
                conn.execute(ddl)
                conn.execute(claims_ddl)
            else:
                conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._busy_timeout))
                for statement in (ddl, claims_ddl):
                    try:
                        conn.execute(statement)
                    except (self._psycopg.errors.UniqueViolation, self._psycopg.errors.DuplicateTable):
                        pass  # another client created the table at the same moment
        except self._errors as exc:
            if conn is not None:
                conn.close()
            raise PersistenceError(f"cannot open checkpoint store {mask_url(self.url)}: {exc}") from exc
        self._conn = conn
        return conn

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (retried once on a fresh connection if the old one broke)."""
        sql = sql.replace("?", self._ph).format(table=self.table)
        with self._lock:
            if self._closed:
                raise PersistenceError(f"{self!r} is closed")
            for attempt in (1, 2):
                conn = self._conn if self._conn is not None else self._connect()
                try:
                    cursor = conn.execute(sql, tuple(params))
                    return list(cursor.fetchall()) if cursor.description else []
                except self._errors as exc:
                    broken = self._ph == "%s" and (conn.broken or conn.closed)
                    if broken:
                        self._conn = None
                        conn.close()
                    if not broken or attempt == 2:
                        raise PersistenceError(f"checkpoint store {mask_url(self.url)} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def save_bundle(self, pid: Pid, bundle: dict[str, Any], tag: str | None = None) -> None:
        """Upsert ``bundle`` as the checkpoint of ``pid`` under ``tag``."""
        key, text = _pid_key(pid), _bundle_text(bundle)
        self._execute(
            "INSERT INTO {table} (pid_key, tag, pid_json, bundle, updated_at) VALUES (?, ?, ?, ?, CURRENT_TIMESTAMP) "
            "ON CONFLICT (pid_key, tag) DO UPDATE SET pid_json = excluded.pid_json, bundle = excluded.bundle, "
            "updated_at = excluded.updated_at",
            (key, _check_tag(tag), key, text),
        )

    def load_checkpoint(self, pid: Pid, tag: str | None = None) -> Bundle:
        """Return the checkpoint of ``pid`` under ``tag``, decoded afresh."""
        key = (_pid_key(pid), _check_tag(tag))
        rows = self._execute("SELECT bundle FROM {table} WHERE pid_key = ? AND tag = ?", key)
        if not rows:
            raise _missing(pid, tag)
        return _load(rows[0][0])

    def get_checkpoints(self) -> list[PersistedCheckpoint]:
        """Return every stored checkpoint."""
        rows = self._execute("SELECT pid_json, tag FROM {table} ORDER BY pid_key, tag")
        return [PersistedCheckpoint(_codec.decode(p), t or None) for p, t in rows]

    def get_process_checkpoints(self, pid: Pid) -> list[PersistedCheckpoint]:
        """Return the checkpoints stored for ``pid``."""
        rows = self._execute("SELECT tag FROM {table} WHERE pid_key = ? ORDER BY tag", (_pid_key(pid),))
        return [PersistedCheckpoint(pid, t or None) for (t,) in rows]

    def delete_checkpoint(self, pid: Pid, tag: str | None = None) -> None:
        """Delete one checkpoint if present."""
        self._execute("DELETE FROM {table} WHERE pid_key = ? AND tag = ?", (_pid_key(pid), _check_tag(tag)))

    def delete_process_checkpoints(self, pid: Pid) -> None:
        """Delete every checkpoint of ``pid``."""
        self._execute("DELETE FROM {table} WHERE pid_key = ?", (_pid_key(pid),))

    def claim(self, pid: Pid, owner: str, ttl: float) -> bool:
        """One atomic upsert: take the claim if it is free, expired or already ``owner``'s."""
        key, now = _pid_key(pid), time.time()
        self._execute(
            "INSERT INTO {table}_claims (pid_key, owner, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (pid_key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
            "WHERE {table}_claims.owner = excluded.owner OR {table}_claims.expires_at < ?",
            (key, owner, now + ttl, now),
        )
        rows = self._execute("SELECT owner FROM {table}_claims WHERE pid_key = ?", (key,))
        return bool(rows) and rows[0][0] == owner

    def release(self, pid: Pid, owner: str) -> None:
        """Drop ``owner``'s claim on ``pid``."""
        self._execute("DELETE FROM {table}_claims WHERE pid_key = ? AND owner = ?", (_pid_key(pid), owner))

    def close(self) -> None:
        """Close the connection; later calls raise PersistenceError."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        return f"SqlPersister({mask_url(self.url)!r}, table={self.table!r})"


def get_persister(url: str | None = None) -> Persister:
    """Return a persister for ``url``: ``None`` or ``memory://`` in memory, otherwise :class:`SqlPersister`."""
    if url is None or url.lower() in ("memory://", "memory:"):
        return InMemoryPersister()
    return SqlPersister(url)
