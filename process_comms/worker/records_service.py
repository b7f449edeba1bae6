"""Ask the fleet, not a database (docs/fleet.md, "Who answers for a process"): every worker answers record
queries on one shared RPC route.

Each worker of an installation subscribes ``__records__.<task queue name>``; the broker gives every
worker's RPC queue a copy of a query and the client takes the first answer. A worker answers from its
live processes first, then from its persister's records; a stored record of a process that has not
ended is checked against the process's own route, so a listing shows live state, not a stale row.
It also prunes the store: at start and every :data:`~.records.RECORD_PRUNE_INTERVAL` seconds; and it
marks lost the records of processes whose holder is gone without handing them back (:meth:`sweep_lost`).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import concurrent.futures
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from ..errors import ProcessCommsError, ProcessUnreachable
from ..transports.base import AsyncCommunicator, InvalidTask
from ..transports.loop import run_on
from ..wire.listing import CURSOR_ORDER_ONLY, check_listing, is_paged_order, row_matches, sort_rows
from ..wire.messages import (
    INTENT_KEY,
    KILL_REQUESTED,
    MESSAGE_TEXT_KEY,
    PID_KEY,
    RECORD_OP_GET,
    RECORD_OP_KEY,
    RECORD_OP_KILL,
    RECORD_OP_LIST,
    RECORDS_INTENT,
    TERMINAL_STATES,
    UNENDED_STATES,
    MessageBuilder,
    Pid,
    is_kill_request,
    lost_record,
    state_name,
    wire_text,
)
from .persistence._base import bounded_progress, safe_value, summary_of
from .records import RECORD_MAX_AGE, RECORD_MAX_COUNT, RECORD_PRUNE_INTERVAL

if TYPE_CHECKING:
    from .launcher import ProcessLauncher

__all__ = [
    "KILL_REQUEST_MAX_AGE",
    "KILL_REQUEST_MAX_COUNT",
    "LIST_PAGE_BYTES",
    "LIVE_CHECK_TIMEOUT",
    "LOST_GRACE",
    "LOST_SWEEP_INTERVAL",
    "NOT_FOUND_GRACE",
    "RecordsService",
    "parse_cursor",
]

T = TypeVar("T")

LOGGER = logging.getLogger(__name__)

#: Seconds a worker waits for a live process on another worker to answer its status, for a listing.
LIVE_CHECK_TIMEOUT = 2.0
#: Seconds a worker holds back "no record": another worker of the fleet that has it answers first.
NOT_FOUND_GRACE = 0.25
#: Largest ``limit`` of a listing.
MAX_LIST_LIMIT = 10_000
#: Seconds a kill request for an unknown pid is kept (a task of that pid queued meanwhile is dropped): a week.
KILL_REQUEST_MAX_AGE = 7 * 24 * 3600.0
#: Kill requests for unknown pids kept at most (the oldest go first): a typo never grows the store unbounded.
KILL_REQUEST_MAX_COUNT = 1000
#: Kill requests are trimmed once a tenth of the cap was added since the last trim (and at every prune):
#: a store holds at most 1.1 times the cap per worker adding them.
KILL_REQUEST_TRIM_FRACTION = 10
#: Pages one trim reads at most (the next trim goes on): bounded even if a store's delete does nothing.
KILL_REQUEST_TRIM_ROUNDS = 20


#: Bytes of summaries one listing answer carries at most (JSON; the wire's limit is 8 MiB): the rest of a
#: listing is a next page, asked for with the answer's ``more`` cursor. Each summary is bounded
#: (:func:`~.persistence._base.summary_of`), so a page of the default 100 rows is never cut by it.
LIST_PAGE_BYTES = 1024 * 1024


def _ctime(row: dict[str, object]) -> float:
    """A summary's creation time (0 when it has none)."""
    return float(cast("float", row.get("ctime") or 0.0))


def _mtime(row: dict[str, object]) -> float:
    """A summary's last change (0 when it has none)."""
    return float(cast("float", row.get("mtime") or 0))


def _cursor(rows: list[dict[str, object]], skip: frozenset[str], before: float | None) -> str:
    """The cursor of the page after ``rows`` (newest first): created at or before the last row's ``ctime``,
    less the pids already given at that very time (they may share it)."""
    last = _ctime(rows[-1])
    same = {str(row.get("pid")) for row in rows if _ctime(row) == last}
    if before == last:
        same |= skip
    text = json.dumps([last, sorted(same)], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def parse_cursor(cursor: object) -> tuple[float | None, frozenset[str]]:
    """``(before, pids to skip)`` of a listing cursor (None: the first page); InvalidTask if it is not one."""
    if cursor is None:
        return None, frozenset()
    try:
        before, skip = json.loads(base64.urlsafe_b64decode(str(cursor).encode("ascii")))
        if isinstance(before, (int, float)) and isinstance(skip, list) and all(isinstance(p, str) for p in skip):
            return float(before), frozenset(skip)
    except (ValueError, TypeError, UnicodeError):
        pass
    raise InvalidTask(f"not a listing cursor: {str(cursor)[:80]!r} (pass the 'more' of a listing's answer)")


def _page(rows: list[dict[str, object]], limit: int) -> tuple[list[dict[str, object]], bool]:
    """The first of ``rows`` up to ``limit`` rows and :data:`LIST_PAGE_BYTES` (at least one); and whether rows
    are left."""
    page: list[dict[str, object]] = []
    used = 0
    for row in rows[:limit]:
        size = len(json.dumps(row, default=str, separators=(",", ":"))) + 1
        if page and used + size > LIST_PAGE_BYTES:
            return page, True
        page.append(row)
        used += size
    return page, len(rows) > len(page)


#: Seconds between two looks of a worker for the records of processes whose holder is gone.
LOST_SWEEP_INTERVAL = 1.0
#: Seconds a holder must stay gone (its liveness token and the process's route both) before its unpersisted
#: processes are marked lost: a worker whose connection the broker closed reconnects within them and runs on.
LOST_GRACE = 2.0
#: Records of each state that has not ended looked at per sweep: one page, newest first; the next sweep reads
#: the page after it, and after the last page the newest again, so every unended record is looked at however
#: many a fleet holds (a store of N unended records is gone through in N / (3 x this) sweeps).
LOST_SWEEP_LIMIT = 1000


class _Query(NamedTuple):
    """A listing's filters and order beyond time and class (checked by :func:`~..wire.listing.check_listing`)."""

    states: tuple[str, ...] | None = None
    label: str | None = None
    sort: str = "age"
    reverse: bool = False


def _order(msg: dict[str, object]) -> tuple[Any, Any]:
    """The ``sort`` and ``reverse`` a listing request asks for (absent: newest first)."""
    return msg.get("sort"), msg.get("reverse", False)


class RecordsService:
    """The records route's subscriber for one worker: ``get``, ``list`` and ``kill`` (of a pid no worker runs)."""

    #: Called on the communicator's loop directly: it validates and hands the work to the launcher's loop.
    loop_safe = True

    def __init__(
        self,
        launcher: ProcessLauncher,
        core: AsyncCommunicator,
        comm_loop: asyncio.AbstractEventLoop,
        *,
        max_age: float = RECORD_MAX_AGE,
        max_count: int = RECORD_MAX_COUNT,
        prune_interval: float = RECORD_PRUNE_INTERVAL,
    ) -> None:
        self.launcher = launcher
        assert launcher.persister is not None, "records need a persister"
        self.persister = launcher.persister
        self.core, self.comm_loop = core, comm_loop
        #: The launcher's link to ``core``: every crossing to the communicator's loop goes through it.
        self.link = launcher.link(core, comm_loop)
        self.max_age, self.max_count, self.prune_interval = max_age, max_count, prune_interval
        #: How long, and how many, kill requests for unknown pids are kept (:meth:`kill`).
        self.kill_request_max_age, self.kill_request_max_count = KILL_REQUEST_MAX_AGE, KILL_REQUEST_MAX_COUNT
        self._untrimmed = 0  # kill requests kept since the last trim
        self._trimming = asyncio.Lock()
        self._pruner: concurrent.futures.Future[None] | None = None
        self._sweeper: concurrent.futures.Future[None] | None = None
        #: pid key -> (token, loop time first seen gone) of records whose holder is gone (bounded by the sweep)
        self._gone: dict[str, tuple[str, float]] = {}
        #: pid keys of persisted records of gone holders: the broker hands their tasks to another worker
        self._persisted: dict[str, str] = {}
        #: Where the sweep's next page of unended records starts (their ``ctime``; None: the newest), and the pid
        #: keys seen (with their token) in this pass over them: at its end, ``_gone`` and ``_persisted`` keep
        #: only those.
        self._sweep_before: float | None = None
        self._swept: dict[str, str] = {}

    # -- the RPC entry (on the communicator's loop) ---------------------------------------------------
    def __call__(self, _comm: object, msg: object) -> concurrent.futures.Future[object]:
        """Validate a records request and answer it on the launcher's loop."""
        if not isinstance(msg, dict) or msg.get(INTENT_KEY) != RECORDS_INTENT:
            raise InvalidTask("a records request is a mapping with intent 'records'")
        op = msg.get(RECORD_OP_KEY)
        if op in (RECORD_OP_GET, RECORD_OP_KILL):
            if msg.get(PID_KEY) is None:
                raise InvalidTask(f"a records {op!r} request needs a 'pid'")
            if op == RECORD_OP_GET:
                return run_on(self.launcher.loop, self.get, msg[PID_KEY])
            text = wire_text(msg.get(MESSAGE_TEXT_KEY), "text of a kill")
            return run_on(self.launcher.loop, self.kill, msg[PID_KEY], text)
        if op == RECORD_OP_LIST:
            cls = msg.get("class_name")
            limit, since, cursor = msg.get("limit", 100), msg.get("since"), msg.get("cursor")
            query = _Query(*check_listing(msg.get("state"), msg.get("states"), msg.get("label"), *_order(msg)))
            if cls is not None and not isinstance(cls, str):
                raise InvalidTask("'class_name' must be a string or null")
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise InvalidTask("'limit' must be an integer of 0 or more")
            if since is not None and (not isinstance(since, (int, float)) or isinstance(since, bool)):
                raise InvalidTask("'since' must be a number (epoch seconds) or null")
            if cursor is not None and not isinstance(cursor, str):
                raise InvalidTask("'cursor' must be a string (a listing answer's 'more') or null")
            if cursor is not None and not is_paged_order(query.sort, query.reverse):
                raise InvalidTask(CURSOR_ORDER_ONLY)
            limit = min(limit, MAX_LIST_LIMIT)
            if msg.get("page") is True:  # a client that reads pages: {"processes": [...], "more": cursor or null}
                return run_on(self.launcher.loop, self.list_page, query, limit, since, cls, parse_cursor(cursor))
            return run_on(self.launcher.loop, self.list, query, limit, since, cls)  # an older client: one list
        raise InvalidTask(f"unknown records op {op!r}: expected get, list or kill")

    # -- the answers (on the launcher's loop) ---------------------------------------------------------
    async def _store(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _live_status(self, pid: object) -> dict[str, object] | None:
        """The status of ``pid`` from its own route (another worker runs it), or None if no worker holds it."""

        async def ask() -> object:
            return await asyncio.wait_for(self.link.core.rpc_send(pid, MessageBuilder.status()), LIVE_CHECK_TIMEOUT)

        try:
            status = await self.link.call(ask)
        except (ProcessCommsError, TimeoutError):
            return None
        return status if isinstance(status, dict) else None

    @staticmethod
    def _with_live(record: dict[str, object], status: dict[str, object] | None) -> dict[str, object]:
        if status is None:
            return {**record, "live": False}
        live: dict[str, object] = {k: status[k] for k in ("paused", "status", "progress", "host") if k in status}
        live["state_name"] = state_name(status.get("state")) or record.get("state_name")
        return {**record, **live, "live": True}

    async def get(self, pid: Pid) -> dict[str, object] | None:
        """The whole record of ``pid`` (``live`` says whether a worker runs it now), or None."""
        proc = self.launcher.held(pid)
        if proc is not None:
            return {**safe_value(proc.record()), "live": not proc.state.terminal}  # as the store would keep it
        record = await self._store(self.persister.load_record, pid)
        if record is None:
            await asyncio.sleep(NOT_FOUND_GRACE)
            return None
        if record.get("state_name") in TERMINAL_STATES or is_kill_request(record):
            return {**record, "live": False}
        status = await self._live_status(pid)
        if status is not None and state_name(status.get("state")) in TERMINAL_STATES:
            # it has just ended on another worker, which answers from the process itself; this copy is
            # stale (no outputs yet), so it answers second and reads the store again first
            await asyncio.sleep(NOT_FOUND_GRACE)
            again = await self._store(self.persister.load_record, pid)
            if isinstance(again, dict) and again.get("state_name") in TERMINAL_STATES:
                return {**again, "live": False}
        return self._with_live(record, status)

    async def list_page(
        self,
        query: _Query | str | None,
        limit: int,
        since: float | None,
        class_name: str | None,
        cursor: tuple[float | None, frozenset[str]],
    ) -> dict[str, object]:
        """One page of record summaries, live and ended (live state from the live processes): at most ``limit``
        rows and :data:`LIST_PAGE_BYTES`; ``more`` is the cursor of the next page, or None. Newest first pages
        with the cursor; another order (wire/listing.py) sorts the newest ``limit`` matches: one page, no cursor."""
        query = _Query((query,) if isinstance(query, str) else None) if not isinstance(query, _Query) else query
        before, skip = cursor
        if not is_paged_order(query.sort, query.reverse):
            rows = sort_rows(await self._rows(query, limit, since, class_name, None), query.sort, query.reverse)
            return {"processes": _page(rows, limit)[0], "more": None}
        rows = await self._rows(query, limit + len(skip) + 1, since, class_name, before)
        rows = [row for row in rows if str(row.get("pid")) not in skip]
        page, more = _page(rows, limit)
        return {"processes": page, "more": _cursor(page, skip, before) if more and page else None}

    async def _rows(
        self, query: _Query, limit: int, since: float | None, class_name: str | None, before: float | None
    ) -> list[dict[str, object]]:
        """Up to ``limit`` summaries created at or before ``before``, newest first, live ones merged in; kill
        requests for unknown pids are no processes and are left out (unless asked for by their state)."""
        states, label = query.states, query.label
        requests = states is not None and KILL_REQUESTED in states
        extra: dict[str, Any] = {
            key: value for key, value in (("states", states), ("label", label)) if value is not None
        }
        rows: list[dict[str, object]] = await self._store(
            functools.partial(self.persister.list_records, None, limit, since, class_name, before, **extra)
        )
        if not requests and len(rows) == limit and any(map(is_kill_request, rows)):
            # at most kill_request_max_count more rows fill the page
            wanted = limit + self.kill_request_max_count
            read = functools.partial(self.persister.list_records, None, wanted, since, class_name, before, **extra)
            rows = await self._store(read)
        if not requests:
            rows = [row for row in rows if not is_kill_request(row)]
        by_pid = {str(row.get("pid")): {**row, "progress": bounded_progress(row.get("progress"))} for row in rows}
        held = [(proc, True) for proc in self.launcher.processes.values()]
        held += [(proc, False) for proc in self.launcher.ending.values()]  # ended, record write in flight
        for proc, live in held:  # newer than the store's copy, or not written yet
            if before is not None and proc.ctime > before:
                continue
            summary = summary_of(proc.record())
            if (since is None or proc.ctime >= since) and class_name in (None, summary["class"]):
                by_pid[str(proc.pid)] = {**summary, "live": live}
        settled: list[dict[str, object]] = []  # held here, or ended: no need to ask their routes
        others: list[dict[str, object]] = []
        for row in by_pid.values():
            (settled if "live" in row or row.get("state_name") in TERMINAL_STATES else others).append(row)
        statuses = await asyncio.gather(*(self._live_status(row.get("pid")) for row in others))
        merged = [{**row, "live": row.get("live", False)} for row in settled]
        merged += [self._with_live(row, status) for row, status in zip(others, statuses, strict=True)]
        merged = [row for row in merged if row_matches(row, states, label)]  # live state may differ from stored
        merged.sort(key=_ctime, reverse=True)
        return merged

    async def list(
        self, query: _Query | str | None, limit: int, since: float | None, class_name: str | None
    ) -> list[dict[str, object]]:
        """The first page of a listing as a plain list (what a client older than pages asks for)."""
        page = await self.list_page(query, limit, since, class_name, (None, frozenset()))
        return cast("list[dict[str, object]]", page["processes"])

    async def kill(self, pid: Pid, message: str | None) -> dict[str, object]:
        """Kill ``pid`` where no worker runs it: a task still queued, a parked process, or an orphan whose
        worker died. Its record says ``killed`` and no worker runs it again (the launcher checks)."""
        proc = self.launcher.held(pid)
        if proc is not None:
            killed = await proc.kill(message)
            return {"killed": killed, "state_name": proc.state.value}
        if await self._live_status(pid) is not None:
            return {"killed": False, "state_name": "running", "live": True}
        record = await self._store(self.persister.load_record, pid)
        if isinstance(record, dict) and record.get("state_name") in TERMINAL_STATES:
            return {"killed": record.get("state_name") == "killed", "state_name": record.get("state_name")}
        if record is None or is_kill_request(record):
            return await self._request_kill(pid, message)
        now, text = time.time(), message or "killed before a worker ran it"
        record = dict(record)
        history = [
            *cast("list[object]", record.get("history") or []),
            {"event": "killed", "time": now, "message": text},
        ]
        record.update(state_name="killed", status=text, history=history, mtime=now, paused=False)
        record.setdefault("progress", {})
        await self._store(self.persister.save_records, [record])
        LOGGER.info("process %s marked killed: no worker runs it (%s)", pid, text)
        return {"killed": True, "known": True, "state_name": "killed"}

    async def _request_kill(self, pid: Pid, message: str | None) -> dict[str, object]:
        """Keep a kill request for ``pid``, which no worker has run: not a process, a tombstone that a task of
        that pid still queued meets (the worker drops it: worker/_pids.py). Lists leave it out; it expires
        after ``kill_request_max_age`` seconds and about ``kill_request_max_count`` are kept (the trim is
        amortised: :data:`KILL_REQUEST_TRIM_FRACTION`)."""
        now, text = time.time(), message or "killed before a worker ran it"
        request: dict[str, Any] = {
            "pid": pid,
            "class": "",
            "inputs": {},
            "state_name": KILL_REQUESTED,
            "paused": False,
            "status": text,
            "progress": {},
            "history": [{"event": "kill requested", "time": now, "message": text}],
            "ctime": now,
            "mtime": now,
        }
        await self._store(self.persister.save_records, [request])
        self._untrimmed += 1
        if self._untrimmed > self.kill_request_max_count // KILL_REQUEST_TRIM_FRACTION:  # amortised: a trim reads
            await self._trim_kill_requests()  # the kept requests, so it runs once per cap/10 of them
        LOGGER.info("kill requested for process %s, which no worker has run (%s)", pid, text)
        return {"killed": False, "known": False, "state_name": KILL_REQUESTED}

    async def _trim_kill_requests(self) -> None:
        """Delete the kill requests older than ``kill_request_max_age`` and those beyond the newest
        ``kill_request_max_count``."""
        delete = self.persister.delete_records
        async with self._trimming:  # one at a time: the last one reads every request added before it
            self._untrimmed = 0
            cap, cutoff = max(self.kill_request_max_count, 0), time.time() - self.kill_request_max_age
            page = cap + max(cap, 100)
            for _ in range(KILL_REQUEST_TRIM_ROUNDS):  # a burst may have added more than a page: a round deletes
                rows = await self._store(self.persister.list_records, KILL_REQUESTED, page, None, None)  # its excess
                old = [r.get("pid") for i, r in enumerate(rows) if i >= cap or _mtime(r) < cutoff]
                if old:
                    await self._store(delete, old)
                if len(rows) < page:
                    return

    # -- retention -------------------------------------------------------------------------------------
    def start_pruning(self) -> None:
        """Prune the store now and every ``prune_interval`` seconds, on the launcher's loop."""
        if self._pruner is None:
            self._pruner = run_on(self.launcher.loop, self._prune_forever)

    def stop_pruning(self) -> None:
        """Stop the pruning task (idempotent)."""
        if self._pruner is not None:
            self._pruner.cancel()

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self._store(self.persister.prune_records, self.max_age, self.max_count)
                await self._trim_kill_requests()
            except Exception as exc:  # noqa: BLE001 - pruning is housekeeping: try again next time
                LOGGER.warning("could not prune process records: %s", exc)
            await asyncio.sleep(self.prune_interval)

    # -- lost processes ----------------------------------------------------------------------------------
    def start_sweeping(self, interval: float = LOST_SWEEP_INTERVAL) -> None:
        """Look for the records of lost processes now and every ``interval`` seconds, on the launcher's loop."""
        if self._sweeper is None:
            self._sweeper = run_on(self.launcher.loop, self._sweep_forever, interval)

    def stop_sweeping(self) -> None:
        """Stop the sweeping task (idempotent)."""
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            try:
                await self.sweep_lost()
            except Exception as exc:  # noqa: BLE001 - housekeeping: try again next time
                LOGGER.warning("could not look for lost processes: %s", exc)
            await asyncio.sleep(interval)

    async def _route_gone(self, pid: Pid) -> bool:
        """True only if the broker says no one holds ``pid``'s route (a timeout proves nothing)."""

        async def ask() -> object:
            return await asyncio.wait_for(self.link.core.rpc_send(pid, MessageBuilder.status()), LIVE_CHECK_TIMEOUT)

        try:
            await self.link.call(ask)
        except ProcessUnreachable:
            return True
        except (ProcessCommsError, TimeoutError):
            return False
        return False

    def _page_on(self, rows: builtins.list[dict[str, object]], before: float | None) -> bool:
        """Set where the next sweep reads: the page after ``rows`` (read from ``before``), or the newest again
        once a page came back short (the last) or could not move on (a page of one ``ctime``); True then (the
        pass over every unended record is over)."""
        ctimes = [c for row in rows if isinstance(c := row.get("ctime"), (int, float))]
        oldest = min(ctimes) if ctimes else None
        stuck = oldest is None or (before is not None and oldest >= before)
        if stuck or len(rows) < LOST_SWEEP_LIMIT * len(UNENDED_STATES):
            self._sweep_before = None
            return True
        self._sweep_before = oldest  # the rows created at ``oldest`` come again: none is skipped
        return False

    async def sweep_lost(self) -> builtins.list[Pid]:
        """Mark lost (``excepted``, exception ``ProcessLost``) the records of unpersisted processes whose holder
        is gone: its liveness token and the process's route both gone for :data:`LOST_GRACE` seconds. A
        persisted one is left alone: its task goes back to the queue and another worker continues it."""
        own = self.launcher.tokens()
        seen: dict[str, tuple[Pid, str]] = {}
        limit = LOST_SWEEP_LIMIT * len(UNENDED_STATES)  # one store round trip for every state not ended
        before = self._sweep_before
        read = functools.partial(self.persister.list_records, None, limit, None, None, before, states=UNENDED_STATES)
        rows = await self._store(read)
        for row in rows:
            token, pid = row.get("token"), cast(Pid, row.get("pid"))  # a pid the store kept
            if isinstance(token, str) and token not in own and self.launcher.held(pid) is None:
                seen[str(pid)] = (pid, token)
        self._swept.update((key, token) for key, (_, token) in seen.items())
        for key, (_, token) in seen.items():  # taken over meanwhile: what was known of its holder is not of this one
            if key in self._gone and self._gone[key][0] != token:
                del self._gone[key]
            if self._persisted.get(key, token) != token:
                del self._persisted[key]
        if self._page_on(rows, before):  # a pass over every unended record ended: forget what it did not see
            kept, self._swept = self._swept, {}
            self._gone = {key: value for key, value in self._gone.items() if kept.get(key) == value[0]}
            self._persisted = {key: token for key, token in self._persisted.items() if kept.get(key) == token}
        marked: list[Pid] = []
        now = asyncio.get_running_loop().time()
        for key, (pid, token) in seen.items():
            if key in self._persisted or await self.link.is_alive(token) is not False:
                self._gone.pop(key, None)
                continue
            since = self._gone.setdefault(key, (token, now))[1]
            if now - since < LOST_GRACE or not await self._route_gone(pid):
                continue
            record = await self._store(self.persister.load_record, pid)
            if not isinstance(record, dict) or record.get("token") != token:
                continue  # another worker holds it now
            if record.get("state_name") not in UNENDED_STATES:
                continue  # it ended meanwhile
            if record.get("persisted"):
                self._persisted[key] = token
                continue
            reason = f"its worker {record.get('worker')} is gone and it was not persisted, so no worker can continue it"
            await self._store(self.persister.save_records, [lost_record(record, reason, time.time())])
            LOGGER.warning("process %s marked lost: %s", pid, reason)
            self._gone.pop(key, None)
            marked.append(pid)
        return marked
