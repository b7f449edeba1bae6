"""Checkpoint persistence for processes: the plumpy ``Persister`` interface, in memory or in SQL.

State is stored as JSON text (never pickled), so a bundle must be a JSON-safe dict (UUIDs allowed)
that survives a round trip unchanged. :func:`get_persister` picks the store from a URL;
:func:`open_record_store` opens one read-only, to read the process records its workers wrote.
"""

from __future__ import annotations

import urllib.parse

from ...errors import PersistenceError, StoreUnavailable
from ._base import MAX_BUNDLE_BYTES, Bundle, ClaimHolder, PersistedCheckpoint, Persister
from .memory import MEMORY_RECORD_BYTES, InMemoryPersister
from .sql import DEFAULT_TABLE, SqlPersister

__all__ = [
    "DEFAULT_TABLE",
    "MAX_BUNDLE_BYTES",
    "MEMORY_RECORD_BYTES",
    "Bundle",
    "ClaimHolder",
    "InMemoryPersister",
    "PersistedCheckpoint",
    "Persister",
    "SqlPersister",
    "get_persister",
    "open_record_store",
]


def get_persister(url: str | None = None) -> Persister:
    """Return a persister for ``url``: ``None`` or ``memory://`` in memory (``memory://?max_record_bytes=N`` bounds
    its process records to N bytes, default :data:`MEMORY_RECORD_BYTES`), otherwise :class:`SqlPersister`."""
    if url is None:
        return InMemoryPersister()
    base, _, query = url.partition("?")
    if base.lower() in ("memory://", "memory:"):
        options = urllib.parse.parse_qs(query, keep_blank_values=True)
        unknown = set(options) - {"max_record_bytes"}
        if unknown:
            raise PersistenceError(f"unknown memory:// option(s) {sorted(unknown)}: only max_record_bytes")
        if not options:
            return InMemoryPersister()
        text = options["max_record_bytes"][-1]
        if not text.isdigit() or int(text) < 1:
            raise PersistenceError(f"max_record_bytes must be a positive integer of bytes, not {text!r}")
        return InMemoryPersister(max_record_bytes=int(text))
    return SqlPersister(url)


def open_record_store(url: str, table: str = DEFAULT_TABLE, timeout: float = 30.0) -> SqlPersister:
    """A read-only view of the process records in the store at ``url`` (what the workers' ``--persister``
    names), for a controller's ``store=`` when no worker answers. It connects on first use and waits at most
    ``timeout`` seconds for the server or a lock; a store that is not there raises :class:`StoreUnavailable`."""
    if url.lower() in ("memory://", "memory:"):
        raise StoreUnavailable("an in-memory store lives inside its worker: name a file or a server store")
    try:
        return SqlPersister(url, table, busy_timeout=timeout, read_only=True)
    except ValueError as exc:  # an unknown scheme, a bad SQLite URL or table name
        raise StoreUnavailable(str(exc)) from None
