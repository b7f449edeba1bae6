"""Checkpoints in one SQL table, in SQLite or PostgreSQL.

The two databases differ only in what their dialect (``_dialects.py``) holds (how to connect, the parameter
placeholder, the timestamp type, which errors mean what); the statements are written once.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from ...errors import PersistenceError, StoreUnavailable
from ...urls import mask_url
from ...wire.messages import Pid
from ._base import (
    Bundle,
    ClaimHolder,
    PersistedCheckpoint,
    Persister,
    _bundle_text,
    _check_tag,
    _decode_pid,
    _load,
    _missing,
    _pid_key,
    decode_record,
    decode_summary,
    record_texts,
)
from ._dialects import _dialect_for

__all__ = ["DEFAULT_TABLE", "SqlPersister"]

#: Table used by :class:`SqlPersister` unless another is named.
DEFAULT_TABLE = "process_comms_checkpoints"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Statements, with ``{table}`` and ``{p}`` (the dialect's placeholder) filled in per persister.
_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} (pid_key TEXT NOT NULL, tag TEXT NOT NULL DEFAULT '', "
    "pid_json TEXT NOT NULL, bundle TEXT NOT NULL, "
    "updated_at {timestamp} NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (pid_key, tag))"
)
_CLAIMS_DDL = (
    "CREATE TABLE IF NOT EXISTS {table}_claims (pid_key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL, token TEXT, renewed_at DOUBLE PRECISION)"
)
#: Columns of the claims table added after its first release (liveness): added to older tables on open.
_CLAIMS_ADDED = (("token", "TEXT"), ("renewed_at", "DOUBLE PRECISION"))
_UPSERT = (
    "INSERT INTO {table} (pid_key, tag, pid_json, bundle, updated_at) VALUES ({p}, {p}, {p}, {p}, CURRENT_TIMESTAMP) "
    "ON CONFLICT (pid_key, tag) DO UPDATE SET pid_json = excluded.pid_json, bundle = excluded.bundle, "
    "updated_at = excluded.updated_at"
)
_LOAD = "SELECT bundle FROM {table} WHERE pid_key = {p} AND tag = {p}"
_LIST_ALL = "SELECT pid_json, tag FROM {table} ORDER BY pid_key, tag"
_LIST_PID = "SELECT tag FROM {table} WHERE pid_key = {p} ORDER BY tag"
_DELETE = "DELETE FROM {table} WHERE pid_key = {p} AND tag = {p}"
_DELETE_PID = "DELETE FROM {table} WHERE pid_key = {p}"
_CLAIM = (
    "INSERT INTO {table}_claims (pid_key, owner, expires_at, renewed_at) VALUES ({p}, {p}, {p}, {p}) "
    "ON CONFLICT (pid_key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at, "
    "renewed_at = excluded.renewed_at, token = CASE WHEN {table}_claims.owner = excluded.owner "
    "THEN {table}_claims.token END "
    "WHERE {table}_claims.owner = excluded.owner OR {table}_claims.expires_at < {p}"
)
_TRY_CLAIM = (
    "INSERT INTO {table}_claims (pid_key, owner, expires_at, renewed_at, token) VALUES ({p}, {p}, {p}, {p}, {p}) "
    "ON CONFLICT (pid_key) DO UPDATE SET expires_at = excluded.expires_at, renewed_at = excluded.renewed_at, "
    "token = excluded.token WHERE {table}_claims.owner = excluded.owner"
)
_CLAIM_HOLDER = "SELECT owner, token, expires_at, renewed_at FROM {table}_claims WHERE pid_key = {p}"
# compare-and-swap: only the holder as it was read (owner and expiry: every renewal moves the expiry)
_TAKE_OVER = (
    "UPDATE {table}_claims SET owner = {p}, token = {p}, expires_at = {p}, renewed_at = {p} "
    "WHERE pid_key = {p} AND owner = {p} AND expires_at = {p}"
)
_RENEW = "UPDATE {table}_claims SET expires_at = {p}, renewed_at = {p} WHERE owner = {p}"
_OWNED = "SELECT pid_key FROM {table}_claims WHERE owner = {p}"
# process records (docs/fleet.md): inputs are written once (the upsert leaves them), the summary is what lists read
_RECORDS_DDL = (
    "CREATE TABLE IF NOT EXISTS {table}_records (pid_key TEXT PRIMARY KEY, class_name TEXT NOT NULL, "
    "state TEXT NOT NULL, ctime DOUBLE PRECISION NOT NULL, mtime DOUBLE PRECISION NOT NULL, "
    "summary TEXT NOT NULL, record TEXT NOT NULL, inputs TEXT NOT NULL)"
)
_RECORDS_INDEX = "CREATE INDEX IF NOT EXISTS {table}_records_ctime ON {table}_records (ctime)"
#: Statements after which the SQLite write-ahead log is checkpointed (the file's own auto-checkpoint is off).
_WAL_CHECKPOINT_EVERY = 200
#: Rows per multi-row upsert: 8 parameters each stays far below SQLite's oldest limit of 999 parameters.
_RECORD_ROWS_PER_STATEMENT = 100
_RECORD_ROW = "({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"


@functools.lru_cache(maxsize=_RECORD_ROWS_PER_STATEMENT)
def _record_upsert(rows: int) -> str:
    """The upsert of ``rows`` records in one statement."""
    return (
        "INSERT INTO {table}_records (pid_key, class_name, state, ctime, mtime, summary, record, inputs) VALUES "
        + ", ".join([_RECORD_ROW] * rows)
        + " ON CONFLICT (pid_key) DO UPDATE SET class_name = excluded.class_name, state = excluded.state, "
        "mtime = excluded.mtime, summary = excluded.summary, record = excluded.record"
    )


_RECORD_LOAD = "SELECT record, inputs FROM {table}_records WHERE pid_key = {p}"
_ENDED = "state IN ('finished', 'excepted', 'killed')"
_RECORD_PRUNE_AGE = "DELETE FROM {table}_records WHERE mtime < {p} AND " + _ENDED
_RECORD_PRUNE_COUNT = (
    "DELETE FROM {table}_records WHERE " + _ENDED + " AND ctime <= "
    "(SELECT ctime FROM {table}_records ORDER BY ctime DESC LIMIT 1 OFFSET {p})"
)
_RECORD_DELETE = "DELETE FROM {table}_records WHERE pid_key = {p}"
_CLAIM_OWNER = "SELECT owner FROM {table}_claims WHERE pid_key = {p}"
_RELEASE = "DELETE FROM {table}_claims WHERE pid_key = {p} AND owner = {p}"


class SqlPersister(Persister):
    """Stores checkpoints in one SQL table: ``sqlite:///file.db``, ``sqlite://`` or ``postgresql://...``.

    With ``read_only=True`` it only reads what a worker wrote (``process-comms list --store``): it connects on
    first use, creates nothing, and its connection cannot write (SQLite ``mode=ro``; PostgreSQL read-only
    transactions), so a write, a prune or a claim through it fails with PersistenceError and changes nothing.
    """

    def __init__(
        self, url: str, table: str = DEFAULT_TABLE, busy_timeout: float = 30.0, *, read_only: bool = False
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise ValueError(f"invalid table name {table!r}: use letters, digits and underscores")
        self.url, self.table = url, table
        self.read_only = read_only
        self._busy_timeout = busy_timeout
        self._dialect = _dialect_for(url)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._closed = False
        #: Statements since the WAL was last checkpointed (SQLite).
        self._writes = 0
        #: Whether the connection waits ``busy_timeout`` for another writer (the thread path) or not at all
        #: (:meth:`save_records_nowait`). Switched only when the path changes: each PRAGMA is a statement,
        #: and so a GIL hand-over, that cost as much as the write it guarded (py-spy of a loaded worker).
        self._patient = True
        if not read_only:  # a reader connects when first asked: a fleet that answers never touches the store
            with self._lock:
                self._connect()

    def _sql(self, template: str) -> str:
        return template.format(table=self.table, p=self._dialect.placeholder, timestamp=self._dialect.timestamp_type)

    def _connect(self) -> Any:
        """Open the connection and create the tables; called with the lock held."""
        if self.read_only:
            return self._connect_read_only()
        dialect, conn = self._dialect, None
        try:
            conn = dialect.connect(self._busy_timeout)
            self._patient = True
            for statement in (_DDL, _CLAIMS_DDL, _RECORDS_DDL, _RECORDS_INDEX):
                try:
                    conn.execute(self._sql(statement))
                except dialect.create_races:
                    pass  # another client created the table at the same moment
            self._add_claim_columns(conn)
        except dialect.errors as exc:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"cannot open checkpoint store {mask_url(self.url)}: {exc}") from exc
        self._conn = conn
        return conn

    def _connect_read_only(self) -> Any:
        """Open a connection that cannot write, and check that the records table is there; lock held."""
        dialect, conn = self._dialect, None
        where = mask_url(self.url)
        try:
            if dialect.connect_read_only is None:  # pragma: no cover - every dialect has one
                raise StoreUnavailable(f"the store {where} cannot be opened read-only")
            conn = dialect.connect_read_only(self._busy_timeout)
        except dialect.errors as exc:
            raise StoreUnavailable(f"cannot open the store {where} to read: {exc}") from exc
        try:
            conn.execute(self._sql("SELECT 1 FROM {table}_records WHERE 1 = 0"))
        except dialect.errors as exc:
            conn.close()
            raise StoreUnavailable(
                f"the store {where} has no process records (table {self.table}_records: {exc}); "
                "is it the store the workers write (their --persister), and the right table?"
            ) from exc
        self._conn = conn
        return conn

    def _add_claim_columns(self, conn: Any) -> None:
        """Add the claim columns a table made by an older release lacks (``ALTER TABLE ... ADD COLUMN``)."""

        def columns() -> set[str]:
            cursor = conn.execute(self._sql("SELECT * FROM {table}_claims WHERE 1 = 0"))
            return {str(column[0]).lower() for column in cursor.description}

        for name, kind in _CLAIMS_ADDED:
            if name in columns():
                continue
            try:
                conn.execute(self._sql(f"ALTER TABLE {{table}}_claims ADD COLUMN {name} {kind}"))
            except self._dialect.errors:
                if name not in columns():  # not another client adding it at the same moment: a real error
                    raise

    def _execute(self, template: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (retried once on a fresh connection if the old one broke); its rows."""
        return self._run([(template, params)])

    def _run(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[Any, ...]]:
        """Run ``statements`` (several in one transaction), retried once on a fresh connection if the old one
        broke; the rows of the last."""
        with self._lock:
            if self._closed:
                raise PersistenceError(f"{self!r} is closed")
            for attempt in (1, 2):
                conn = self._conn if self._conn is not None else self._connect()
                try:
                    if not self._patient:
                        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                        self._patient = True
                    rows = self._statements(conn, statements)
                    if self._dialect.local and not self.read_only and self._writes >= _WAL_CHECKPOINT_EVERY:
                        self._writes = 0
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never waits for readers or writers
                    return rows
                except self._dialect.errors as exc:
                    broken = self._dialect.is_broken(conn)
                    if broken:
                        self._conn = None
                        conn.close()
                    if not broken or attempt == 2:
                        raise PersistenceError(f"checkpoint store {mask_url(self.url)} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _statements(self, conn: Any, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[Any, ...]]:
        """Run ``statements`` on ``conn`` (several in one transaction); the rows of the last. Lock held."""
        self._writes += len(statements)
        if len(statements) == 1:
            return self._one(conn, *statements[0])
        with self._dialect.transaction(conn):
            rows: list[tuple[Any, ...]] = []
            for template, params in statements:
                rows = self._one(conn, template, params)
            return rows

    def _one(self, conn: Any, template: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor = conn.execute(self._sql(template), tuple(params))
        return list(cursor.fetchall()) if cursor.description else []

    def save_bundle(self, pid: Pid, bundle: dict[str, object], tag: str | None = None) -> None:
        """Upsert ``bundle`` as the checkpoint of ``pid`` under ``tag``."""
        key, text = _pid_key(pid), _bundle_text(bundle)
        self._execute(_UPSERT, (key, _check_tag(tag), key, text))

    def load_checkpoint(self, pid: Pid, tag: str | None = None) -> Bundle:
        """Return the checkpoint of ``pid`` under ``tag``, decoded afresh."""
        rows = self._execute(_LOAD, (_pid_key(pid), _check_tag(tag)))
        if not rows:
            raise _missing(pid, tag)
        return _load(rows[0][0])

    def get_checkpoints(self) -> list[PersistedCheckpoint]:
        """Return every stored checkpoint."""
        return [PersistedCheckpoint(_decode_pid(p), t or None) for p, t in self._execute(_LIST_ALL)]

    def get_process_checkpoints(self, pid: Pid) -> list[PersistedCheckpoint]:
        """Return the checkpoints stored for ``pid``."""
        return [PersistedCheckpoint(pid, t or None) for (t,) in self._execute(_LIST_PID, (_pid_key(pid),))]

    def delete_checkpoint(self, pid: Pid, tag: str | None = None) -> None:
        """Delete one checkpoint if present."""
        self._execute(_DELETE, (_pid_key(pid), _check_tag(tag)))

    def delete_process_checkpoints(self, pid: Pid) -> None:
        """Delete every checkpoint of ``pid``."""
        self._execute(_DELETE_PID, (_pid_key(pid),))

    def claim(self, pid: Pid, owner: str, ttl: float) -> bool:
        """One atomic upsert: take the claim if it is free, expired or already ``owner``'s."""
        key, now = _pid_key(pid), time.time()
        self._execute(_CLAIM, (key, owner, now + ttl, now, now))
        rows = self._execute(_CLAIM_OWNER, (key,))
        return bool(rows) and rows[0][0] == owner

    def _holder(self, key: str) -> ClaimHolder | None:
        rows = self._execute(_CLAIM_HOLDER, (key,))
        if not rows:
            return None
        owner, token, expires_at, renewed_at = rows[0]
        return ClaimHolder(owner, token, float(expires_at), None if renewed_at is None else float(renewed_at))

    def try_claim(self, pid: Pid, owner: str, ttl: float, token: str | None = None) -> ClaimHolder | None:
        """One atomic upsert that takes a free claim or renews ``owner``'s; else the holder."""
        key, now = _pid_key(pid), time.time()
        self._execute(_TRY_CLAIM, (key, owner, now + ttl, now, token))
        holder = self._holder(key)
        return None if holder is not None and holder.owner == owner else holder

    def take_over(self, pid: Pid, owner: str, ttl: float, token: str | None, holder: ClaimHolder) -> bool:
        """One conditional update on the holder as read: of two workers taking over, one wins."""
        key, now = _pid_key(pid), time.time()
        self._execute(_TAKE_OVER, (owner, token, now + ttl, now, key, holder.owner, holder.expires_at))
        found = self._holder(key)
        return found is not None and found.owner == owner

    def renew_claims(self, owner: str, ttl: float, pids: Iterable[Pid]) -> list[Pid]:
        """One update renews all of ``owner``'s claims; one select tells which of ``pids`` it lost."""
        now = time.time()
        self._execute(_RENEW, (now + ttl, now, owner))
        held = {key for (key,) in self._execute(_OWNED, (owner,))}
        return [pid for pid in pids if _pid_key(pid) not in held]

    def release(self, pid: Pid, owner: str) -> None:
        """Drop ``owner``'s claim on ``pid``."""
        self._execute(_RELEASE, (_pid_key(pid), owner))

    keeps_records = True

    def save_records(self, records: Sequence[dict[str, object]]) -> None:
        """Upsert the records in one transaction (the inputs column keeps its first value)."""
        statements = self._record_statements(records)
        if statements:
            self._run(statements)

    def save_records_nowait(self, records: Sequence[dict[str, object]]) -> bool:
        """Upsert the records now if that cannot wait: a SQLite file that no thread or process is writing, and
        a WAL that needs no checkpoint (that is left to :meth:`save_records`, on a thread). False otherwise."""
        if not self._dialect.local:
            return False  # a server: every statement is a round trip
        statements = self._record_statements(records)
        if not statements:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            if self._closed or conn is None or self._writes + len(statements) >= _WAL_CHECKPOINT_EVERY:
                return False
            try:
                if self._patient:
                    conn.execute("PRAGMA busy_timeout = 0")
                    self._patient = False
                self._statements(conn, statements)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return False  # another process writes the file: wait for it on a thread
                raise PersistenceError(f"checkpoint store {mask_url(self.url)} failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise PersistenceError(f"checkpoint store {mask_url(self.url)} failed: {exc}") from exc
            return True
        finally:
            self._lock.release()

    def _record_statements(self, records: Sequence[dict[str, object]]) -> list[tuple[str, list[Any]]]:
        """The upserts of ``records``: multi-row statements of :data:`_RECORD_ROWS_PER_STATEMENT`, so the driver
        crosses into the database (and gives up the GIL) once per statement, not once per row."""
        rows: dict[str, tuple[Any, ...]] = {}
        for record in records:
            summary, body, inputs = record_texts(record)
            key = _pid_key(record["pid"])
            rows[key] = (
                key,
                str(record.get("class") or ""),
                str(record.get("state_name") or ""),
                float(cast("float", record.get("ctime") or time.time())),
                float(cast("float", record.get("mtime") or time.time())),
                summary,
                body,
                inputs,
            )  # the last record of a pid wins: one statement may not upsert a row twice (PostgreSQL)
        values = list(rows.values())
        step = _RECORD_ROWS_PER_STATEMENT
        return [
            (_record_upsert(len(chunk)), [field for row in chunk for field in row])
            for chunk in (values[i : i + step] for i in range(0, len(values), step))
        ]

    def load_record(self, pid: Pid) -> dict[str, object] | None:
        """The record of ``pid``, decoded afresh, or None."""
        rows = self._execute(_RECORD_LOAD, (_pid_key(pid),))
        return decode_record(rows[0][0], rows[0][1]) if rows else None

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
        """Record summaries, newest first (the ``ctime`` index serves the order); the label is read from the
        summary's JSON (no column of its own: a store an older release made needs no migration)."""
        where: list[str] = []
        params: list[Any] = []
        filters = (("state = {p}", state), ("ctime >= {p}", since), ("class_name = {p}", class_name))
        for column, value in (*filters, ("ctime <= {p}", before), (self._dialect.label_contains, label)):
            if value is not None:
                where.append(column)
                params.append(value)
        if states is not None:
            where.append(f"state IN ({', '.join(['{p}'] * len(states))})" if states else "1 = 0")
            params += list(states)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        template = "SELECT summary FROM {table}_records" + clause + " ORDER BY ctime DESC LIMIT {p}"
        return [decode_summary(text) for (text,) in self._execute(template, (*params, max(int(limit), 0)))]

    def prune_records(self, max_age: float, max_count: int) -> None:
        """Delete ended records older than ``max_age`` s, then those beyond the newest ``max_count``."""
        self._execute(_RECORD_PRUNE_AGE, (time.time() - max_age,))
        self._execute(_RECORD_PRUNE_COUNT, (max(int(max_count), 0),))

    def delete_records(self, pids: Iterable[Pid]) -> None:
        """Delete the records of ``pids`` in one transaction."""
        statements = [(_RECORD_DELETE, (_pid_key(pid),)) for pid in pids]
        if statements:
            self._run(statements)

    def close(self) -> None:
        """Close the connection; later calls raise PersistenceError."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"SqlPersister({mask_url(self.url)!r}, table={self.table!r}{mode})"
