"""Checkpoint persistence for processes: the plumpy ``Persister`` interface, in memory or in SQL.

State is stored as JSON text (never pickled), so a bundle must be a JSON-safe dict (UUIDs allowed)
that survives a round trip unchanged. :func:`get_persister` picks the store from a URL.
"""

from __future__ import annotations

from ._base import MAX_BUNDLE_BYTES, Bundle, ClaimHolder, PersistedCheckpoint, Persister
from .memory import InMemoryPersister
from .sql import DEFAULT_TABLE, SqlPersister

__all__ = [
    "DEFAULT_TABLE",
    "MAX_BUNDLE_BYTES",
    "Bundle",
    "ClaimHolder",
    "InMemoryPersister",
    "PersistedCheckpoint",
    "Persister",
    "SqlPersister",
    "get_persister",
]


def get_persister(url: str | None = None) -> Persister:
    """Return a persister for ``url``: ``None`` or ``memory://`` in memory, otherwise :class:`SqlPersister`."""
    if url is None or url.lower() in ("memory://", "memory:"):
        return InMemoryPersister()
    return SqlPersister(url)
