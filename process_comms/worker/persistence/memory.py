"""Checkpoints kept in memory: for tests and for workers that need no restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ...wire.messages import Pid
from ._base import (
    Bundle,
    PersistedCheckpoint,
    Persister,
    _bundle_text,
    _check_tag,
    _decode_pid,
    _load,
    _missing,
    _pid_key,
)
from ._records import TERMINAL_STATE_NAMES, decode_record, decode_summary, record_texts

__all__ = ["InMemoryPersister"]


class InMemoryPersister(Persister):
    """Keeps checkpoints as JSON text in a dict; thread-safe, lost when the object goes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: dict[tuple[str, str], str] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        #: pid key -> (summary, decoded summary, body, inputs)
        self._records: dict[str, tuple[str, dict[str, Any], str, str]] = {}

    keeps_records = True

    def save_records(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep each record as JSON text (its inputs from the first write of its pid)."""
        encoded = [(_pid_key(r.get("pid")), record_texts(r)) for r in records]
        with self._lock:
            for key, (summary, body, inputs) in encoded:
                old = self._records.get(key)
                if old is not None:
                    inputs = old[3]
                self._records[key] = (summary, decode_summary(summary), body, inputs)

    def load_record(self, pid: Pid) -> dict[str, Any] | None:
        """A fresh copy of the record of ``pid``, or None."""
        with self._lock:
            entry = self._records.get(_pid_key(pid))
        return None if entry is None else decode_record(entry[2], entry[3])

    def list_records(
        self, state: str | None = None, limit: int = 100, since: float | None = None, class_name: str | None = None
    ) -> list[dict[str, Any]]:
        """Record summaries, newest first."""
        with self._lock:
            rows = [(s[1], s[0]) for s in self._records.values()]
        chosen = [
            (summary["ctime"], text)
            for summary, text in rows
            if (state is None or summary["state_name"] == state)
            and (since is None or summary["ctime"] >= since)
            and (class_name is None or summary["class"] == class_name)
        ]
        chosen.sort(key=lambda row: row[0], reverse=True)
        return [decode_summary(text) for _, text in chosen[: max(limit, 0)]]

    def prune_records(self, max_age: float, max_count: int) -> None:
        """Drop ended records older than ``max_age`` s and those beyond the newest ``max_count``."""
        cutoff = time.time() - max_age
        with self._lock:
            newest = sorted(self._records.items(), key=lambda kv: kv[1][1]["ctime"], reverse=True)
            for index, (key, entry) in enumerate(newest):
                summary = entry[1]
                if summary["state_name"] in TERMINAL_STATE_NAMES and (
                    (summary["mtime"] or 0) < cutoff or index >= max_count
                ):
                    del self._records[key]

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
        return [PersistedCheckpoint(_decode_pid(k), t or None) for k, t in keys if pid_key in (None, k)]

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
