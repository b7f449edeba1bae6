"""Process records on the client side (docs/fleet.md): the query the fleet answers, and what a record means.

A client needs only the broker: a records request goes to ``__records__.<task queue name>``, which every
worker of the installation subscribes (see :mod:`process_comms.worker.records_service`); the first
answer wins. With no worker bound, the request is unroutable and the error says so.

Given the store the workers write (``store=``, a :class:`RecordStore` such as
``process_comms.open_record_store(url)``), a query that no worker answers (none is up, or none answers in
time) is read from the store instead, and the answer says so (``source``, ``source_reason``). The fleet is
asked first: while a worker holds a process, the process itself answers and its stored record may lag.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from ..errors import InvalidTask, ProcessCommsError, ProcessKilled, ProcessLost, ProcessUnreachable, RemoteError
from ..errors import TimeoutError as PCTimeoutError
from ..transports.base import AsyncCommunicator
from ..transports.loop import with_deadline
from ..wire.listing import CURSOR_ORDER_ONLY, check_listing, is_paged_order, row_matches, sort_rows
from ..wire.messages import (
    RECORD_OP_GET,
    RECORD_OP_KILL,
    RECORD_OP_LIST,
    UNENDED_STATES,
    MessageBuilder,
    MessageType,
    Pid,
    is_kill_request,
    is_lost,
    is_terminal,
    lost_record,
    records_request,
    records_route,
    status_of_record,
)
from ..wire.types import ProcessPage, ProcessRecord, ProcessStatus, ProcessSummary

T = TypeVar("T")
#: The listing fields beyond plumpy's that a query carries (states, label, sort, reverse; wire/listing.py).
ListQuery = dict[str, object]

__all__ = [
    "FROM_STORE",
    "NO_RECORDS_WORKER",
    "ProcessListing",
    "RecordQueries",
    "RecordStore",
    "ask_records",
    "epoch",
    "lost_error",
    "outputs_of",
    "status_from_record",
]

#: What a records query says when no worker is up to answer it.
NO_RECORDS_WORKER = "no worker is up to answer for process records"
#: The ``source`` of a record or listing read from the store because no worker answered.
FROM_STORE = "store"


class RecordStore(Protocol):
    """Where the workers keep process records, read directly: a persister's two record reads (blocking).

    ``process_comms.open_record_store(url)`` opens one read-only; any :class:`~process_comms.Persister` will do.
    """

    def load_record(self, pid: Pid) -> Mapping[str, object] | None: ...

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
    ) -> Sequence[Mapping[str, object]]: ...


class ProcessListing(list[ProcessSummary]):
    """What ``list_processes`` returns: the summaries, and where they came from (``source``: ``"fleet"``, or
    ``"store"`` when no worker answered; then ``source_reason`` says why) - also when there are none."""

    def __init__(self, rows: list[ProcessSummary], source: str = "fleet", source_reason: str | None = None) -> None:
        super().__init__(rows)
        self.source, self.source_reason = source, source_reason


def epoch(since: float | datetime.datetime | None) -> float | None:
    """``since`` as epoch seconds (a naive datetime is local time)."""
    if since is None or isinstance(since, (int, float)):
        return None if since is None else float(since)
    return since.timestamp()


@runtime_checkable
class _NamedTaskQueue(Protocol):
    """A communicator with a default task queue of its own name (RabbitMQ's; the embedded one has none)."""

    task_queue_name: str


async def ask_records(core: AsyncCommunicator, op: str, deadline: float, **fields: object) -> object:
    """Send one records request and return the first worker's answer."""
    route = records_route(str(core.task_queue_name) if isinstance(core, _NamedTaskQueue) else "embedded")
    try:
        return await with_deadline(core.rpc_send(route, records_request(op, **fields)), deadline, f"records {op}")
    except ProcessUnreachable:
        raise ProcessUnreachable(f"{NO_RECORDS_WORKER} (task queue {route.split('.', 1)[1]!r})") from None


#: The status dict of a stored record: the one rule lives in wire/messages.py (a worker answers with it too).
status_from_record = status_of_record


def outputs_of(pid: Pid, record: Mapping[str, object]) -> dict[str, object] | None:
    """The outputs of a finished record; None while it has not ended; raises as waiting for it would."""
    state = record.get("state_name")
    if is_lost(record):
        raise lost_error(pid, record)
    if state == "finished":
        outputs = record.get("outputs")
        return dict(outputs) if isinstance(outputs, dict) else {}
    if state == "killed":
        raise ProcessKilled(str(record.get("status") or "killed"), "KilledError")
    if state == "excepted":
        info = record.get("exception")
        info = info if isinstance(info, dict) else {}
        kind, text = info.get("type"), info.get("traceback")
        raise RemoteError(
            str(info.get("message") or f"process {pid} excepted"),
            kind if isinstance(kind, str) else None,
            text if isinstance(text, str) else None,
        )
    return None


def lost_error(pid: Pid, record_or_status: Mapping[str, object]) -> ProcessLost:
    """The error a caller gets for a process whose record says it was lost (wire/messages.py, ``is_lost``)."""
    exception = record_or_status.get("exception")
    reason = exception.get("message") if isinstance(exception, dict) else None
    return ProcessLost(f"process {pid} was lost: {reason or 'its worker is gone'}")


def _summary(row: Mapping[str, object]) -> ProcessSummary:
    """A listing row as the fleet or the store answers it (a dict of a summary's keys)."""
    return cast(ProcessSummary, row)


def _no_answer(exc: ProcessCommsError) -> str:
    """Why a query was read from the store: the fleet's failure, in words."""
    return f"no worker answered ({exc})"


class RecordQueries:
    """The controller's record queries (coroutines on the communicator's loop); the public methods that
    run them are :class:`~process_comms.client.controller.RemoteProcessController`'s."""

    rpc_timeout: float
    #: Read when no worker answers a ``get`` or ``list`` (None: such a query fails as it always did).
    _store: RecordStore | None = None

    @property
    def _core(self) -> AsyncCommunicator:
        raise NotImplementedError  # pragma: no cover - the controller's

    async def _rpc(self, pid: Pid, msg: MessageType, timeout: float | None) -> Any:
        raise NotImplementedError  # pragma: no cover - the controller's

    async def _records(self, op: str, timeout: float | None, **fields: object) -> object:
        return await ask_records(self._core, op, self.rpc_timeout if timeout is None else timeout, **fields)

    async def _read_store(self, read: Callable[..., T], timeout: float | None, *args: object) -> T:
        """``read(*args)`` (a blocking store read) on a thread, bounded by the query's deadline."""
        deadline = self.rpc_timeout if timeout is None else timeout
        return await with_deadline(asyncio.to_thread(read, *args), deadline, "reading the store")

    @staticmethod
    def _stored(record: Mapping[str, object], unanswered: ProcessCommsError) -> ProcessRecord:
        """A stored record or summary as the answer: ``live`` False when no worker is up (none can run it),
        None when workers are up but did not answer in time (one may run it); ``source`` says it is the
        store's and ``source_reason`` why. With no worker up, a record of an unpersisted process that has not
        ended is answered as lost: no one runs it, and the next worker to start marks it so in the store."""
        live = False if isinstance(unanswered, ProcessUnreachable) else None
        if live is False and not record.get("persisted") and str(record.get("state_name")) in UNENDED_STATES:
            mtime = record.get("mtime")
            record = lost_record(
                record, "its worker is gone: no worker is up", float(mtime) if isinstance(mtime, (int, float)) else 0.0
            )
        return cast(
            ProcessRecord, {**record, "live": live, "source": FROM_STORE, "source_reason": _no_answer(unanswered)}
        )

    async def _record(
        self, pid: Pid, timeout: float | None, unreachable: ProcessUnreachable, requests: bool = False
    ) -> ProcessRecord:
        """The record of ``pid``, from the fleet, else (no worker answered) from the store if one is given;
        ``ProcessUnreachable`` (saying which) if neither has it, or if there is only a kill request for it
        (returned with ``requests``: ``state_name`` ``kill_requested``)."""
        try:
            record = await self._records(RECORD_OP_GET, timeout, pid=pid)
        except (ProcessUnreachable, PCTimeoutError) as exc:
            # workers that are up but do not answer in time: stopped, overloaded
            timed_out = isinstance(exc, PCTimeoutError)
            why = f"and no worker answered for its record in time ({exc})" if timed_out else str(exc)
            if self._store is None:
                raise ProcessUnreachable(f"{unreachable}; {why}") from None
            stored = await self._read_store(self._store.load_record, timeout, pid)
            if not isinstance(stored, dict):
                raise ProcessUnreachable(f"{unreachable}; {why}; and the store has no record of it") from None
            return self._stored(stored, exc)
        if not isinstance(record, dict):
            raise ProcessUnreachable(
                f"process {pid} is not reachable: no worker holds it and the fleet has no record of it"
            )
        if is_kill_request(record) and not requests:
            raise ProcessUnreachable(
                f"process {pid} is not reachable: no worker has run it; a kill was requested for this pid "
                "(a task of it still queued will be dropped)"
            )
        return cast(ProcessRecord, record)

    async def _control(self, pid: Pid, message: MessageType, timeout: float | None) -> bool:
        """Send a pause: the process's answer, or False from the record of one that has ended."""
        try:
            answer: bool = await self._rpc(pid, message, timeout)
            return answer
        except ProcessUnreachable as exc:
            return await self._ended(pid, exc, timeout, False)

    async def _ended(self, pid: Pid, unreachable: ProcessUnreachable, timeout: float | None, answer: bool) -> bool:
        """``answer`` if the record of ``pid`` (which no worker holds) says it ended: what the process itself
        answers a pause (False) or a play (True) once it has ended, so the answer does not depend on whether
        its worker has let go of it yet; else ``unreachable`` (parked, no record, no worker up)."""
        try:
            record = await self._records(RECORD_OP_GET, timeout, pid=pid)
        except (ProcessUnreachable, PCTimeoutError):
            raise unreachable from None
        if isinstance(record, dict) and is_terminal(str(record.get("state_name"))):
            return answer
        raise unreachable

    async def _status(self, pid: Pid, timeout: float | None) -> ProcessStatus:
        try:
            status: ProcessStatus = await self._rpc(pid, MessageBuilder.status(), timeout)
            return status
        except ProcessUnreachable as exc:
            return status_from_record(await self._record(pid, timeout, exc))

    async def _get_record(self, pid: Pid, timeout: float | None) -> ProcessRecord:
        return await self._record(pid, timeout, ProcessUnreachable(f"process {pid} is not reachable"), True)

    async def _outputs(self, pid: Pid, timeout: float | None) -> dict[str, object] | None:
        return outputs_of(pid, await self._record(pid, timeout, ProcessUnreachable(f"process {pid} is not reachable")))

    @staticmethod
    def _query(states: Sequence[str] | None, label: str | None, sort: str | None, reverse: bool) -> ListQuery:
        """The listing query's fields beyond plumpy's (checked: InvalidTask), only those given, so a plain
        listing asks exactly what it always did (wire/listing.py)."""
        merged, label, sort, reverse = check_listing(None, states, label, sort, reverse)
        fields: ListQuery = {"states": list(merged) if merged else None, "label": label}
        query = {key: value for key, value in fields.items() if value is not None}
        return {**query, "sort": sort, "reverse": reverse} if not is_paged_order(sort, reverse) else query

    async def _list_page(
        self,
        state: str | None,
        limit: int,
        since: float | None,
        class_name: str | None,
        cursor: str | None,
        timeout: float | None,
        query: ListQuery | None = None,
    ) -> ProcessPage:
        """One page of a listing: ``{"processes": [...], "more": cursor of the next page or None}``."""
        fields = {"state": state, "limit": limit, "since": since, "class_name": class_name, **(query or {})}
        if cursor is not None and "sort" in fields:
            raise InvalidTask(CURSOR_ORDER_ONLY)
        try:
            answer = await self._records(RECORD_OP_LIST, timeout, **fields, cursor=cursor, page=True)
        except (ProcessUnreachable, PCTimeoutError) as exc:
            if self._store is None or cursor is not None:  # a cursor is the fleet's: the store gives one page
                raise
            stored = await self._read_store(self._read_listing(state, limit, since, class_name, query), timeout)
            found = [_summary(self._stored(row, exc)) for row in stored if not is_kill_request(row)]
            return {"processes": found, "more": None, "source": FROM_STORE, "source_reason": _no_answer(exc)}
        if isinstance(answer, list):  # a worker older than pages: its one answer is the whole listing
            return {"processes": [_summary(row) for row in answer if isinstance(row, dict)], "more": None}
        rows = answer.get("processes") if isinstance(answer, dict) else None
        more = answer.get("more") if isinstance(answer, dict) else None
        found = [_summary(row) for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
        if query:  # a worker older than these filters answers them all: filtered here too (wire/listing.py)
            states, label = check_listing(state, query.get("states"), query.get("label"), None, False)[:2]
            found = [row for row in found if row_matches(row, states, label)]
            if "sort" in query:  # an order other than newest first: the same order, whoever sorted
                found = sort_rows(found, str(query["sort"]), bool(query.get("reverse")))
        return {"processes": found, "more": more if isinstance(more, str) and found else None}

    def _read_listing(
        self, state: str | None, limit: int, since: float | None, class_name: str | None, query: ListQuery | None
    ) -> Callable[[], list[Mapping[str, object]]]:
        """The blocking read of a listing from the store: filtered there, sorted here as a worker sorts it."""
        store, query = self._store, query or {}
        assert store is not None
        sort, reverse = str(query.get("sort") or "age"), bool(query.get("reverse"))
        extra: dict[str, Any] = {"label": query["label"]} if query.get("label") is not None else {}
        if query.get("states"):  # the store's state filter is the merged one
            extra["states"], state = check_listing(state, query["states"], None, None, False)[0], None

        def read() -> list[Mapping[str, object]]:
            return sort_rows(store.list_records(state, limit, since, class_name, **extra), sort, reverse)

        return read

    async def _list(
        self,
        state: str | None,
        limit: int,
        since: float | None,
        class_name: str | None,
        timeout: float | None,
        query: ListQuery | None = None,
    ) -> ProcessListing:
        """Up to ``limit`` rows, page after page (each answer is bounded in bytes by the worker; each waits at
        most ``timeout``); from the store, if one is given, when no worker answers."""
        rows: list[ProcessSummary] = []
        cursor: str | None = None
        while len(rows) < limit:
            page = await self._list_page(state, limit - len(rows), since, class_name, cursor, timeout, query)
            rows += page["processes"]
            if page.get("source") == FROM_STORE:
                return ProcessListing(rows[:limit], FROM_STORE, page.get("source_reason"))
            cursor = page["more"]
            if cursor is None:
                break
        return ProcessListing(rows[:limit])

    async def _kill(self, pid: Pid, message: MessageType, timeout: float | None) -> bool:
        try:
            killed: bool = await self._rpc(pid, message, timeout)
            return killed
        except ProcessUnreachable as exc:
            unreachable = exc
        try:  # no worker holds it: parked, orphaned, or its task still queued; the fleet marks it killed
            answer = await self._records(RECORD_OP_KILL, timeout, pid=pid, message=message.get("message"))
        except ProcessUnreachable:
            raise unreachable from None
        if isinstance(answer, dict) and answer.get("known") is False:
            raise ProcessUnreachable(
                f"process {pid} is not reachable: no worker holds it and the fleet has no record of it "
                "(a task of this pid still queued will be dropped by the worker that takes it)"
            )
        return bool(answer.get("killed")) if isinstance(answer, dict) else False

    async def _ended_state(
        self, pid: Pid, unreachable: ProcessUnreachable, seen: dict[str, str], poll_interval: float
    ) -> str | None:
        """The final state of ``pid`` that no worker holds: from its record, else (no process_comms worker
        answers records: plumpy peers) from its last ``state_changed`` broadcast in ``seen`` now that its
        route is gone. None: not settled yet, look again (a lost process the fleet is about to mark)."""
        try:
            record = await self._record(pid, None, unreachable)
        except ProcessUnreachable as exc:
            if NO_RECORDS_WORKER not in str(exc):
                raise
            if "state" not in seen:  # its final broadcast may still be on its way
                await asyncio.sleep(poll_interval)
            if "state" in seen:
                return seen["state"]
            raise ProcessUnreachable(
                f"process {pid} is not reachable: it has ended (its final state was not seen) or no worker holds it"
            ) from None
        state = str(record.get("state_name"))
        if is_lost(record):
            raise lost_error(pid, record)
        if is_terminal(state):
            return state
        if record.get("token") is not None and not record.get("persisted"):
            return None  # no worker can continue it: the fleet marks it lost within seconds (records_service.py)
        raise ProcessUnreachable(
            f"process {pid} is {state} but no worker runs it: it is parked (released; continue it with "
            "play_process(pid, resume=True)) or its worker died (kill_process(pid) ends it for good)"
        )
