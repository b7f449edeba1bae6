"""The two SQL databases a :class:`~process_comms.worker.persistence.sql.SqlPersister` serves, SQLite and
PostgreSQL: what differs between them (how to connect, the parameter placeholder, the timestamp type, which
errors mean what, how a transaction starts) is held by a :class:`_Dialect`, chosen once from the URL.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import StoreUnavailable
from ...urls import mask_url

__all__ = ["_Dialect", "_dialect_for"]

_URL_HELP = "use sqlite:///path.db, sqlite://, postgresql://user@host:port/db or memory://"
_SQLITE_HELP = "use sqlite:///relative.db or sqlite:////abs/path.db"


@dataclass(frozen=True)
class _Dialect:
    """What one database needs: chosen once from the URL by :func:`_dialect_for`."""

    #: DB-API parameter placeholder.
    placeholder: str
    #: Column type of ``updated_at``.
    timestamp_type: str
    #: The driver's base error: any of these fails the call with PersistenceError.
    errors: tuple[type[Exception], ...]
    #: Errors a ``CREATE TABLE IF NOT EXISTS`` raises when another client creates the table at the same moment.
    create_races: tuple[type[Exception], ...]
    #: Open a connection in autocommit mode, waiting at most the given seconds for a lock or the server.
    connect: Callable[[float], Any]
    #: True if the connection is unusable after an error (then it is replaced and the statement retried once).
    is_broken: Callable[[Any], bool]
    #: A context manager running its block as one transaction (the connection is in autocommit mode).
    transaction: Callable[[Any], AbstractContextManager[Any]]
    #: A file on this machine (SQLite): a write needs no server and can be tried without waiting.
    local: bool = False
    #: Open a connection that cannot write (a reader of records: ``SqlPersister(url, read_only=True)``).
    connect_read_only: Callable[[float], Any] | None = None
    #: A condition: the label in a record's JSON summary holds the parameter (case-sensitive substring).
    label_contains: str = "instr(json_extract(summary, '$.label'), {p}) > 0"


def _sqlite_path(url: str) -> str:
    if not url.lower().startswith("sqlite://"):
        raise ValueError(f"invalid SQLite URL {url!r}: {_SQLITE_HELP}")
    rest = url[len("sqlite://") :]
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise ValueError(f"invalid SQLite URL {url!r}: {_SQLITE_HELP}")
    return rest[1:]


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch to WAL; that switch skips the busy handler, so retry it until the busy timeout."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # back off while another process initialises the file
    conn.execute("PRAGMA synchronous = NORMAL")
    # the persister checkpoints the WAL itself, from a thread (SqlPersister._run): a commit made on an event
    # loop (save_records_nowait) must never be the one that copies the log into the file and syncs it
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def _connect_sqlite(path: str, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if path != ":memory:":
            _enable_wal(conn, busy_timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_sqlite_read_only(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the file with ``mode=ro``: SQLite refuses every write, creates no file and sets no journal mode. A
    reader of a WAL file may create its ``-wal`` and ``-shm`` companions, as every reader does; the database
    file itself is never written (https://www.sqlite.org/wal.html, "Read-Only Databases")."""
    if path == ":memory:":
        raise StoreUnavailable("an in-memory SQLite store lives inside its worker: name a file (sqlite:///path.db)")
    if not os.path.isfile(path):
        raise StoreUnavailable(f"there is no store file {path!r} (check the URL: {_SQLITE_HELP})")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _sqlite_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction on an autocommit (``isolation_level=None``) SQLite connection."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # some errors (a full disk, an I/O error) have rolled it back already
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect_postgres(url: str, busy_timeout: float) -> Any:
    import psycopg

    # libpq reads connect_timeout=0 as 'wait forever': round a short deadline up, never down to 0
    return psycopg.connect(url, autocommit=True, connect_timeout=max(1, math.ceil(busy_timeout)))


def _connect_postgres_read_only(url: str, busy_timeout: float) -> Any:
    """A connection whose every transaction is read-only: the server refuses any write on it."""
    conn = _connect_postgres(url, busy_timeout)
    try:
        conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        conn.close()
        raise
    return conn


def _dialect_for(url: str) -> _Dialect:
    """The dialect of ``url``'s scheme; ValueError for a scheme (or SQLite URL) it cannot serve."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return _Dialect(
            placeholder="?",
            timestamp_type="TEXT",
            errors=(sqlite3.Error,),
            create_races=(),
            connect=functools.partial(_connect_sqlite, _sqlite_path(url)),
            is_broken=lambda _conn: False,  # a local file: an error is the statement's, never the connection's
            transaction=_sqlite_transaction,
            local=True,
            connect_read_only=functools.partial(_connect_sqlite_read_only, _sqlite_path(url)),
        )
    if scheme in ("postgresql", "postgres"):
        import psycopg

        return _Dialect(
            placeholder="%s",
            timestamp_type="TIMESTAMPTZ",
            errors=(psycopg.Error,),
            create_races=(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable),
            connect=functools.partial(_connect_postgres, url),
            is_broken=lambda conn: bool(conn.broken or conn.closed),
            transaction=lambda conn: conn.transaction(),
            connect_read_only=functools.partial(_connect_postgres_read_only, url),
            label_contains="strpos(summary::json ->> 'label', {p}) > 0",
        )
    raise ValueError(f"unknown persister URL scheme {scheme!r} in {mask_url(url)!r}: {_URL_HELP}")
