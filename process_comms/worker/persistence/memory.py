"""Checkpoints kept in memory: for tests and for workers that need no restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ...wire.listing import row_matches
from ...wire.messages import ObjectLoader, Pid
from ._base import (
    TERMINAL_STATE_NAMES,
    Bundle,
    ClaimHolder,
    PersistedCheckpoint,
    Persister,
    RecordTexts,
    _bundle_text,
    _check_tag,
    _decode_pid,
    _load,
    _missing,
    _pid_key,
    _Process,
    decode_record,
    decode_summary,
    record_texts,
)

__all__ = ["MEMORY_RECORD_BYTES", "InMemoryPersister"]

#: Bytes of process records an :class:`InMemoryPersister` keeps by default (``memory://?max_record_bytes=N``
#: to change it): past it, the records of ended processes go, the first to end first. Records of live processes stay.
MEMORY_RECORD_BYTES = 8 * 1024 * 1024
#: The fields of a record that listing, eviction and pruning filter and sort on, kept beside its texts. They are
#: taken from the record as it was written, as sql.py takes its columns: decoding the summary just encoded cost a
#: launch about 5 % of the worker's CPU (py-spy on benchmark d, docs/performance.md).
_INDEX_KEYS = ("state_name", "ctime", "mtime", "class", "label")
#: What one kept record costs beyond its JSON texts (its key, tuple and index fields: about 0.55 kB measured with
#: tracemalloc for a trivial process; 1.8 kB when a decoded summary was kept), counted in the bound so that it is
#: close to the memory the records take.
_RECORD_OVERHEAD = 640


class InMemoryPersister(Persister):
    """Keeps checkpoints as JSON text in a dict; thread-safe, lost when the object goes."""

    def __init__(self, loader: ObjectLoader | None = None, max_record_bytes: int | None = MEMORY_RECORD_BYTES) -> None:
        """``loader`` (plumpy's ``InMemoryPersister(loader=...)``): names the class in each checkpoint it saves,
        so a launcher with the same loader continues it; None is the global loader. ``max_record_bytes``: the
        bytes of process records kept (JSON text plus a fixed cost per record); past it the records of ended
        processes go, the first to end first (None: no bound, as before)."""
        #: The loader that identifies the class of each checkpointed process.
        self.loader = loader
        self._lock = threading.Lock()
        self._store: dict[tuple[str, str], str] = {}
        self._claims: dict[str, ClaimHolder] = {}
        #: pid key -> (summary, the fields filtered and sorted on, body, inputs)
        self._records: dict[str, tuple[str, dict[str, Any], str, str]] = {}  # ctime, mtime are floats
        #: The keys of the records of ended processes, the first to end first: what eviction drops, in its order,
        #: without walking past the records of live processes (a walk of them all on every write, once a store
        #: of many live processes was over its bound).
        self._ended: dict[str, None] = {}
        self.max_record_bytes = max_record_bytes
        #: What the kept records cost, as counted against ``max_record_bytes``.
        self.record_bytes = 0
        #: Records of ended processes dropped to stay within ``max_record_bytes``.
        self.records_evicted = 0

    keeps_records = True

    def save_checkpoint(self, process: _Process, tag: str | None = None) -> None:
        """Store the checkpoint of ``process``, its class identified by :attr:`loader`."""
        bundle = process.save() if self.loader is None else process.save(self.loader)  # type: ignore[call-arg]
        self.save_bundle(process.pid, bundle, tag)

    def save_records(self, records: Sequence[dict[str, object]]) -> None:
        """Keep each record as JSON text (its inputs from the first write of its pid)."""
        encoded = self._encode_records(records)
        with self._lock:
            self._keep_records(encoded)

    def save_records_nowait(self, records: Sequence[dict[str, object]]) -> bool:
        """Keep the records now unless another thread holds the store (then False)."""
        encoded = self._encode_records(records)
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._keep_records(encoded)
        finally:
            self._lock.release()
        return True

    @staticmethod
    def _encode_records(records: Sequence[dict[str, object]]) -> list[tuple[str, RecordTexts, dict[str, Any]]]:
        return [(_pid_key(r.get("pid")), record_texts(r), {k: r.get(k) for k in _INDEX_KEYS}) for r in records]

    def _keep_records(self, encoded: list[tuple[str, RecordTexts, dict[str, Any]]]) -> None:
        """Called with the lock held."""
        for key, (summary, body, inputs), index in encoded:
            old = self._records.get(key)
            if old is not None:
                inputs = old[3]
                self.record_bytes -= _cost(old)
            entry = (summary, index, body, inputs)
            self._records[key] = entry
            self.record_bytes += _cost(entry)
            if index["state_name"] in TERMINAL_STATE_NAMES:
                self._ended.setdefault(key)  # written again once ended: it keeps its place
            else:
                self._ended.pop(key, None)
        if self.max_record_bytes is not None and self.record_bytes > self.max_record_bytes:
            self._evict(self.max_record_bytes)

    def _evict(self, budget: int) -> None:
        """Drop ended records, the first to end first, until the rest cost at most ``budget``. Lock held."""
        excess = self.record_bytes - budget
        doomed = []
        for key in self._ended:  # only as far as it must go, and over ended records only
            if excess <= 0:
                break
            doomed.append(key)
            excess -= _cost(self._records[key])
        for key in doomed:
            self._drop(key)
            self.records_evicted += 1

    def _drop(self, key: str) -> None:
        """Forget the record of ``key``, and what it cost. Lock held."""
        entry = self._records.pop(key, None)
        if entry is not None:
            self.record_bytes -= _cost(entry)
            self._ended.pop(key, None)

    def load_record(self, pid: Pid) -> dict[str, object] | None:
        """A fresh copy of the record of ``pid``, or None."""
        with self._lock:
            entry = self._records.get(_pid_key(pid))
        return None if entry is None else decode_record(entry[2], entry[3])

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
        """Record summaries, newest first."""
        with self._lock:
            rows = [(s[1], s[0]) for s in self._records.values()]
        chosen = [
            (summary["ctime"], text)
            for summary, text in rows
            if (state is None or summary["state_name"] == state)
            and row_matches(summary, states, label)
            and (since is None or summary["ctime"] >= since)
            and (before is None or summary["ctime"] <= before)
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
                    self._drop(key)

    def delete_records(self, pids: Iterable[Pid]) -> None:
        """Drop the records of ``pids``."""
        keys = [_pid_key(pid) for pid in pids]
        with self._lock:
            for key in keys:
                self._drop(key)  # and what it cost: the bound once counted deleted records, and evicted early

    def claim(self, pid: Pid, owner: str, ttl: float) -> bool:
        """Claims held in memory: they coordinate the workers of one Python process."""
        key, now = _pid_key(pid), time.time()
        with self._lock:
            holder = self._claims.get(key)
            if holder is not None and holder.owner != owner and holder.expires_at > now:
                return False
            self._claims[key] = ClaimHolder(owner, None, now + ttl, now)
            return True

    def try_claim(self, pid: Pid, owner: str, ttl: float, token: str | None = None) -> ClaimHolder | None:
        """Take the claim if it is free or ``owner``'s; else return its holder."""
        key, now = _pid_key(pid), time.time()
        with self._lock:
            holder = self._claims.get(key)
            if holder is not None and holder.owner != owner:
                return holder
            self._claims[key] = ClaimHolder(owner, token, now + ttl, now)
            return None

    def take_over(self, pid: Pid, owner: str, ttl: float, token: str | None, holder: ClaimHolder) -> bool:
        """Take the claim from ``holder`` if it is still exactly as read."""
        key, now = _pid_key(pid), time.time()
        with self._lock:
            if self._claims.get(key) != holder:
                return False
            self._claims[key] = ClaimHolder(owner, token, now + ttl, now)
            return True

    def renew_claims(self, owner: str, ttl: float, pids: Iterable[Pid]) -> list[Pid]:
        """Renew ``owner``'s claims; the pids among ``pids`` it no longer holds."""
        now = time.time()
        with self._lock:
            for key, holder in self._claims.items():
                if holder.owner == owner:
                    self._claims[key] = holder._replace(expires_at=now + ttl, renewed_at=now)
            held = {key for key, holder in self._claims.items() if holder.owner == owner}
        return [pid for pid in pids if _pid_key(pid) not in held]

    def release(self, pid: Pid, owner: str) -> None:
        """Drop ``owner``'s claim on ``pid``."""
        key = _pid_key(pid)
        with self._lock:
            holder = self._claims.get(key)
            if holder is not None and holder.owner == owner:
                del self._claims[key]

    def save_bundle(self, pid: Pid, bundle: dict[str, object], tag: str | None = None) -> None:
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
        return "InMemoryPersister()" if self.loader is None else f"InMemoryPersister(loader={self.loader!r})"


def _cost(entry: tuple[str, dict[str, object], str, str]) -> int:
    """What one kept record counts against ``max_record_bytes``."""
    return len(entry[0]) + len(entry[2]) + len(entry[3]) + _RECORD_OVERHEAD
