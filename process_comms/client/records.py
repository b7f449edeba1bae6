"""Process records on the client side (issue 14): the query the fleet answers, and what a record means.

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
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ProcessCommsError, ProcessKilled, ProcessUnreachable, RemoteError
from ..errors import TimeoutError as PCTimeoutError
from ..transports._loop import with_deadline
from ..transports.base import AsyncCommunicator
from ..wire.messages import (
    RECORD_OP_GET,
    RECORD_OP_KILL,
    RECORD_OP_LIST,
    MessageBuilder,
    Pid,
    is_terminal,
    records_request,
    records_route,
)

__all__ = [
    "FROM_STORE",
    "NO_RECORDS_WORKER",
    "ProcessListing",
    "RecordQueries",
    "RecordStore",
    "ask_records",
    "epoch",
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

    def load_record(self, pid: Pid) -> dict[str, Any] | None: ...

    def list_records(
        self, state: str | None = None, limit: int = 100, since: float | None = None, class_name: str | None = None
    ) -> list[dict[str, Any]]: ...


class ProcessListing(list[dict[str, Any]]):
    """What ``list_processes`` returns: the summaries, and where they came from (``source``: ``"fleet"``, or
    ``"store"`` when no worker answered; then ``source_reason`` says why) - also when there are none."""

    def __init__(self, rows: list[dict[str, Any]], source: str = "fleet", source_reason: str | None = None) -> None:
        super().__init__(rows)
        self.source, self.source_reason = source, source_reason


def epoch(since: float | datetime.datetime | None) -> float | None:
    """``since`` as epoch seconds (a naive datetime is local time)."""
    if since is None or isinstance(since, (int, float)):
        return None if since is None else float(since)
    return since.timestamp()


async def ask_records(core: AsyncCommunicator, op: str, deadline: float, **fields: Any) -> Any:
    """Send one records request and return the first worker's answer."""
    route = records_route(str(getattr(core, "task_queue_name", "embedded")))
    try:
        return await with_deadline(core.rpc_send(route, records_request(op, **fields)), deadline, f"records {op}")
    except ProcessUnreachable:
        raise ProcessUnreachable(f"{NO_RECORDS_WORKER} (task queue {route.split('.', 1)[1]!r})") from None


def status_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The status dict of a stored record, as a live process answers it, plus ``outputs`` (finished) or
    ``exception`` (excepted: type, message, traceback); ``record`` is True and ``live`` says whether a
    worker runs the process now (False: it ended, or it is parked)."""
    state = str(record.get("state_name") or "")
    cls = str(record.get("class") or "")
    status: dict[str, Any] = {
        "ctime": record.get("ctime"),
        "mtime": record.get("mtime"),
        "paused": bool(record.get("paused")),
        "process_string": f"<{cls.rpartition(':')[2] or cls}> (ProcessState.{state.upper()})",
        "state": f"ProcessState.{state.upper()}",
        "state_name": state,
        "pid": record.get("pid"),
        "class": cls,
        "status": record.get("status"),
        "progress": record.get("progress") or {},
        "host": record.get("host"),
        "record": True,
        "live": bool(record.get("live", False)),
    }
    if state == "finished":
        status["outputs"] = record.get("outputs")
    if record.get("exception") is not None:
        status["exception"] = record.get("exception")
    if record.get("source") is not None:  # read from the store: no worker answered
        status["source"], status["source_reason"] = record["source"], record.get("source_reason")
    return status


def outputs_of(pid: Pid, record: dict[str, Any]) -> dict[str, Any] | None:
    """The outputs of a finished record; None while it has not ended; raises as waiting for it would."""
    state = record.get("state_name")
    if state == "finished":
        outputs = record.get("outputs")
        return dict(outputs) if isinstance(outputs, dict) else {}
    if state == "killed":
        raise ProcessKilled(str(record.get("status") or "killed"), "KilledError")
    if state == "excepted":
        info: dict[str, Any] = record["exception"] if isinstance(record.get("exception"), dict) else {}
        raise RemoteError(
            str(info.get("message") or f"process {pid} excepted"), info.get("type"), info.get("traceback")
        )
    return None


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

    async def _rpc(self, pid: Pid, msg: dict[str, Any], timeout: float | None) -> Any:
        raise NotImplementedError  # pragma: no cover - the controller's

    async def _records(self, op: str, timeout: float | None, **fields: Any) -> Any:
        return await ask_records(self._core, op, self.rpc_timeout if timeout is None else timeout, **fields)

    async def _read_store(self, read: Callable[..., Any], timeout: float | None, *args: Any) -> Any:
        """``read(*args)`` (a blocking store read) on a thread, bounded by the query's deadline."""
        deadline = self.rpc_timeout if timeout is None else timeout
        return await with_deadline(asyncio.to_thread(read, *args), deadline, "reading the store")

    @staticmethod
    def _stored(record: dict[str, Any], unanswered: ProcessCommsError) -> dict[str, Any]:
        """A stored record or summary as the answer: ``live`` False when no worker is up (none can run it),
        None when workers are up but did not answer in time (one may run it); ``source`` says it is the
        store's and ``source_reason`` why."""
        live = False if isinstance(unanswered, ProcessUnreachable) else None
        return {**record, "live": live, "source": FROM_STORE, "source_reason": _no_answer(unanswered)}

    async def _record(self, pid: Pid, timeout: float | None, unreachable: ProcessUnreachable) -> dict[str, Any]:
        """The record of ``pid``, from the fleet, else (no worker answered) from the store if one is given;
        ``ProcessUnreachable`` (saying which) if neither has it."""
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
        return record

    async def _control(self, pid: Pid, message: dict[str, Any], timeout: float | None) -> bool:
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

    async def _status(self, pid: Pid, timeout: float | None) -> dict[str, Any]:
        try:
            status: dict[str, Any] = await self._rpc(pid, MessageBuilder.status(), timeout)
            return status
        except ProcessUnreachable as exc:
            return status_from_record(await self._record(pid, timeout, exc))

    async def _get_record(self, pid: Pid, timeout: float | None) -> dict[str, Any]:
        return await self._record(pid, timeout, ProcessUnreachable(f"process {pid} is not reachable"))

    async def _outputs(self, pid: Pid, timeout: float | None) -> dict[str, Any] | None:
        return outputs_of(pid, await self._get_record(pid, timeout))

    async def _list(
        self, state: str | None, limit: int, since: float | None, class_name: str | None, timeout: float | None
    ) -> ProcessListing:
        fields = {"state": state, "limit": limit, "since": since, "class_name": class_name}
        try:
            rows = await self._records(RECORD_OP_LIST, timeout, **fields)
        except (ProcessUnreachable, PCTimeoutError) as exc:
            if self._store is None:
                raise
            stored = await self._read_store(self._store.list_records, timeout, state, limit, since, class_name)
            summaries = [self._stored(row, exc) for row in stored if isinstance(row, dict)]
            return ProcessListing(summaries, FROM_STORE, _no_answer(exc))
        return ProcessListing([row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else [])

    async def _kill(self, pid: Pid, message: dict[str, Any], timeout: float | None) -> bool:
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
        self, pid: Pid, unreachable: ProcessUnreachable, done: asyncio.Future[str], poll_interval: float
    ) -> str:
        """The final state of ``pid`` that no worker holds: from its record, else from its last broadcast."""
        try:
            record = await self._record(pid, None, unreachable)
        except ProcessUnreachable as exc:
            if NO_RECORDS_WORKER not in str(exc):
                raise
            await asyncio.wait({done}, timeout=poll_interval)  # no records: its final broadcast may still come
            if done.done():
                return done.result()
            raise ProcessUnreachable(
                f"process {pid} is not reachable: it has ended (its final state was not seen) or no worker holds it"
            ) from None
        state = str(record.get("state_name"))
        if is_terminal(state):
            return state
        raise ProcessUnreachable(
            f"process {pid} is {state} but no worker runs it: it is parked (released; continue it with "
            "play_process(pid, resume=True)) or its worker died (kill_process(pid) ends it for good)"
        )
