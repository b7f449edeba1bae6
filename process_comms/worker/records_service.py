"""Ask the fleet, not a database (issue 14): every worker answers record queries on one shared RPC route.

Each worker of an installation subscribes ``__records__.<task queue name>``; the broker gives every
worker's RPC queue a copy of a query and the client takes the first answer. A worker answers from its
live processes first, then from its persister's records; a stored record of a process that has not
ended is checked against the process's own route, so a listing shows live state, not a stale row.
It also prunes the store: at start and every :data:`~.records.RECORD_PRUNE_INTERVAL` seconds; and it
marks lost the records of processes whose holder is gone without handing them back (:meth:`sweep_lost`).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import ProcessCommsError, ProcessUnreachable
from ..transports._loop import run_on
from ..transports.base import AsyncCommunicator, InvalidTask
from ..wire.messages import (
    INTENT_KEY,
    MESSAGE_TEXT_KEY,
    PID_KEY,
    RECORD_OP_GET,
    RECORD_OP_KEY,
    RECORD_OP_KILL,
    RECORD_OP_LIST,
    RECORDS_INTENT,
    TERMINAL_STATES,
    MessageBuilder,
    Pid,
    state_name,
    wire_text,
)
from ..wire.status import lost_record
from .persistence._records import SUMMARY_KEYS
from .records import RECORD_MAX_AGE, RECORD_MAX_COUNT, RECORD_PRUNE_INTERVAL

if TYPE_CHECKING:
    from .launcher import ProcessLauncher

__all__ = ["LIVE_CHECK_TIMEOUT", "LOST_GRACE", "LOST_SWEEP_INTERVAL", "NOT_FOUND_GRACE", "RecordsService"]

LOGGER = logging.getLogger(__name__)

#: Seconds a worker waits for a live process on another worker to answer its status, for a listing.
LIVE_CHECK_TIMEOUT = 2.0
#: Seconds a worker holds back "no record": another worker of the fleet that has it answers first.
NOT_FOUND_GRACE = 0.25
#: Largest ``limit`` of a listing.
MAX_LIST_LIMIT = 10_000
#: Seconds between two looks of a worker for the records of processes whose holder is gone.
LOST_SWEEP_INTERVAL = 1.0
#: Seconds a holder must stay gone (its liveness token and the process's route both) before its unpersisted
#: processes are marked lost: a worker whose connection the broker closed reconnects within them and runs on.
LOST_GRACE = 2.0
#: Records of each state that has not ended looked at per sweep, newest first.
LOST_SWEEP_LIMIT = 1000
#: States a record has while its process has not ended.
_NOT_ENDED = ("created", "running", "waiting")


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in SUMMARY_KEYS}  # as the store lists it


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
        self.persister = launcher.persister
        self.core, self.comm_loop = core, comm_loop
        self.max_age, self.max_count, self.prune_interval = max_age, max_count, prune_interval
        self._pruner: concurrent.futures.Future[None] | None = None
        self._sweeper: concurrent.futures.Future[None] | None = None
        #: pid key -> (token, loop time first seen gone) of records whose holder is gone (bounded by the sweep)
        self._gone: dict[str, tuple[str, float]] = {}
        #: pid keys of persisted records of gone holders: the broker hands their tasks to another worker
        self._persisted: dict[str, str] = {}

    # -- the RPC entry (on the communicator's loop) ---------------------------------------------------
    def __call__(self, _comm: Any, msg: Any) -> concurrent.futures.Future[Any]:
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
            state, cls = msg.get("state"), msg.get("class_name")
            limit, since = msg.get("limit", 100), msg.get("since")
            if (state is not None and not isinstance(state, str)) or (cls is not None and not isinstance(cls, str)):
                raise InvalidTask("'state' and 'class_name' must be strings or null")
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise InvalidTask("'limit' must be an integer of 0 or more")
            if since is not None and (not isinstance(since, (int, float)) or isinstance(since, bool)):
                raise InvalidTask("'since' must be a number (epoch seconds) or null")
            return run_on(self.launcher.loop, self.list, state, min(limit, MAX_LIST_LIMIT), since, cls)
        raise InvalidTask(f"unknown records op {op!r}: expected get, list or kill")

    # -- the answers (on the launcher's loop) ---------------------------------------------------------
    async def _store(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _live_status(self, pid: Pid) -> dict[str, Any] | None:
        """The status of ``pid`` from its own route (another worker runs it), or None if no worker holds it."""

        async def ask() -> Any:
            return await asyncio.wait_for(self.core.rpc_send(pid, MessageBuilder.status()), LIVE_CHECK_TIMEOUT)

        try:
            status = await self.launcher._on_comm_loop(self.comm_loop, ask)
        except (ProcessCommsError, TimeoutError):
            return None
        return status if isinstance(status, dict) else None

    @staticmethod
    def _with_live(record: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
        if status is None:
            return {**record, "live": False}
        live: dict[str, Any] = {k: status[k] for k in ("paused", "status", "progress", "host") if k in status}
        live["state_name"] = state_name(status.get("state")) or record.get("state_name")
        return {**record, **live, "live": True}

    async def get(self, pid: Pid) -> dict[str, Any] | None:
        """The whole record of ``pid`` (``live`` says whether a worker runs it now), or None."""
        proc = self.launcher.held(pid)
        if proc is not None:
            return {**proc.record(), "live": not proc.state.terminal}
        record = await self._store(self.persister.load_record, pid)
        if record is None:
            await asyncio.sleep(NOT_FOUND_GRACE)
            return None
        if record.get("state_name") in TERMINAL_STATES:
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

    async def list(
        self, state: str | None, limit: int, since: float | None, class_name: str | None
    ) -> list[dict[str, Any]]:
        """Record summaries, newest first, live and ended; live state from the live processes."""
        rows: list[dict[str, Any]] = await self._store(self.persister.list_records, state, limit, since, class_name)
        by_pid = {str(row.get("pid")): row for row in rows}
        held = [(proc, True) for proc in self.launcher.processes.values()]
        held += [(proc, False) for proc in self.launcher.ending.values()]  # ended, record write in flight
        for proc, live in held:  # newer than the store's copy, or not written yet
            summary = _summary(proc.record())
            if (since is None or proc.ctime >= since) and class_name in (None, summary["class"]):
                by_pid[str(proc.pid)] = {**summary, "live": live}
        settled: list[dict[str, Any]] = []  # held here, or ended: no need to ask their routes
        others: list[dict[str, Any]] = []
        for row in by_pid.values():
            (settled if "live" in row or row.get("state_name") in TERMINAL_STATES else others).append(row)
        statuses = await asyncio.gather(*(self._live_status(row.get("pid")) for row in others))
        merged = [{**row, "live": row.get("live", False)} for row in settled]
        merged += [self._with_live(row, status) for row, status in zip(others, statuses, strict=True)]
        if state is not None:
            merged = [row for row in merged if row.get("state_name") == state]
        merged.sort(key=lambda row: float(row.get("ctime") or 0.0), reverse=True)
        return merged[:limit]

    async def kill(self, pid: Pid, message: str | None) -> dict[str, Any]:
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
        now, text = time.time(), message or "killed before a worker ran it"
        known = isinstance(record, dict)
        # an unknown pid gets a tombstone: a task of that pid still queued is dropped by the worker that takes it
        record = dict(record) if isinstance(record, dict) else {"pid": pid, "class": "", "ctime": now, "inputs": {}}
        history = [*(record.get("history") or []), {"event": "killed", "time": now, "message": text}]
        record.update(state_name="killed", status=text, history=history, mtime=now, paused=False)
        record.setdefault("progress", {})
        await self._store(self.persister.save_records, [record])
        LOGGER.info("process %s marked killed: no worker runs it (%s)", pid, text)
        return {"killed": known, "known": known, "state_name": "killed"}

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

        async def ask() -> Any:
            return await asyncio.wait_for(self.core.rpc_send(pid, MessageBuilder.status()), LIVE_CHECK_TIMEOUT)

        try:
            await self.launcher._on_comm_loop(self.comm_loop, ask)
        except ProcessUnreachable:
            return True
        except (ProcessCommsError, TimeoutError):
            return False
        return False

    async def sweep_lost(self) -> builtins.list[Pid]:
        """Mark lost (``excepted``, exception ``ProcessLost``) the records of unpersisted processes whose holder
        is gone: its liveness token and the process's route both gone for :data:`LOST_GRACE` seconds. A
        persisted one is left alone: its task goes back to the queue and another worker continues it."""
        own = {token for token in self.launcher._tokens.values() if token is not None}
        seen: dict[str, tuple[Pid, str]] = {}
        for state in _NOT_ENDED:
            rows = await self._store(self.persister.list_records, state, LOST_SWEEP_LIMIT, None, None)
            for row in rows:
                token, pid = row.get("token"), row.get("pid")
                if isinstance(token, str) and token not in own and self.launcher.held(pid) is None:
                    seen[str(pid)] = (pid, token)
        self._gone = {key: value for key, value in self._gone.items() if key in seen and value[0] == seen[key][1]}
        self._persisted = {key: token for key, token in self._persisted.items() if seen.get(key, (0, ""))[1] == token}
        marked: list[Pid] = []
        now = asyncio.get_running_loop().time()
        for key, (pid, token) in seen.items():
            if key in self._persisted or await self.launcher._is_alive(token, self.core, self.comm_loop) is not False:
                self._gone.pop(key, None)
                continue
            since = self._gone.setdefault(key, (token, now))[1]
            if now - since < LOST_GRACE or not await self._route_gone(pid):
                continue
            record = await self._store(self.persister.load_record, pid)
            if not isinstance(record, dict) or record.get("token") != token:
                continue  # another worker holds it now
            if record.get("state_name") not in _NOT_ENDED:
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
