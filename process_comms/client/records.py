"""Process records on the client side (issue 14): the query the fleet answers, and what a record means.

A client needs only the broker: a records request goes to ``__records__.<task queue name>``, which every
worker of the installation subscribes (see :mod:`process_comms.worker.records_service`); the first
answer wins. With no worker bound, the request is unroutable and the error says so.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from ..errors import ProcessKilled, ProcessLost, ProcessUnreachable, RemoteError
from ..errors import TimeoutError as PCTimeoutError
from ..transports._loop import with_deadline
from ..transports.base import AsyncCommunicator
from ..wire.messages import (
    RECORD_OP_GET,
    RECORD_OP_KILL,
    RECORD_OP_LIST,
    MessageBuilder,
    Pid,
    is_kill_request,
    is_terminal,
    records_request,
    records_route,
)
from ..wire.status import is_lost, status_of_record

__all__ = [
    "NO_RECORDS_WORKER",
    "RecordQueries",
    "ask_records",
    "epoch",
    "lost_error",
    "outputs_of",
    "status_from_record",
]

#: What a records query says when no worker is up to answer it.
NO_RECORDS_WORKER = "no worker is up to answer for process records"


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


#: The status dict of a stored record: the one rule lives in wire/status.py (a worker answers with it too).
status_from_record = status_of_record


def outputs_of(pid: Pid, record: dict[str, Any]) -> dict[str, Any] | None:
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
        info: dict[str, Any] = record["exception"] if isinstance(record.get("exception"), dict) else {}
        raise RemoteError(
            str(info.get("message") or f"process {pid} excepted"), info.get("type"), info.get("traceback")
        )
    return None


def lost_error(pid: Pid, record_or_status: dict[str, Any]) -> ProcessLost:
    """The error a caller gets for a process whose record says it was lost (wire/status.py, ``is_lost``)."""
    exception = record_or_status.get("exception")
    reason = exception.get("message") if isinstance(exception, dict) else None
    return ProcessLost(f"process {pid} was lost: {reason or 'its worker is gone'}")


class RecordQueries:
    """The controller's record queries (coroutines on the communicator's loop); the public methods that
    run them are :class:`~process_comms.client.controller.RemoteProcessController`'s."""

    rpc_timeout: float

    @property
    def _core(self) -> AsyncCommunicator:
        raise NotImplementedError  # pragma: no cover - the controller's

    async def _rpc(self, pid: Pid, msg: dict[str, Any], timeout: float | None) -> Any:
        raise NotImplementedError  # pragma: no cover - the controller's

    async def _records(self, op: str, timeout: float | None, **fields: Any) -> Any:
        return await ask_records(self._core, op, self.rpc_timeout if timeout is None else timeout, **fields)

    async def _record(
        self, pid: Pid, timeout: float | None, unreachable: ProcessUnreachable, requests: bool = False
    ) -> dict[str, Any]:
        """The record of ``pid``; ``ProcessUnreachable`` (saying which) if the fleet has none or no worker is up,
        or has only a kill request for it (returned with ``requests``: ``state_name`` ``kill_requested``)."""
        try:
            record = await self._records(RECORD_OP_GET, timeout, pid=pid)
        except ProcessUnreachable as exc:
            raise ProcessUnreachable(f"{unreachable}; {exc}") from None
        except PCTimeoutError as exc:  # workers are up but none answered in time (stopped, overloaded)
            raise ProcessUnreachable(f"{unreachable}; and no worker answered for its record in time ({exc})") from None
        if not isinstance(record, dict):
            raise ProcessUnreachable(
                f"process {pid} is not reachable: no worker holds it and the fleet has no record of it"
            )
        if is_kill_request(record) and not requests:
            raise ProcessUnreachable(
                f"process {pid} is not reachable: no worker has run it; a kill was requested for this pid "
                "(a task of it still queued will be dropped)"
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
        return await self._record(pid, timeout, ProcessUnreachable(f"process {pid} is not reachable"), True)

    async def _outputs(self, pid: Pid, timeout: float | None) -> dict[str, Any] | None:
        return outputs_of(pid, await self._record(pid, timeout, ProcessUnreachable(f"process {pid} is not reachable")))

    async def _list_page(
        self,
        state: str | None,
        limit: int,
        since: float | None,
        class_name: str | None,
        cursor: str | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        """One page of a listing: ``{"processes": [...], "more": cursor of the next page or None}``."""
        fields = {"state": state, "limit": limit, "since": since, "class_name": class_name}
        answer = await self._records(RECORD_OP_LIST, timeout, **fields, cursor=cursor, page=True)
        if isinstance(answer, list):  # a worker older than pages: its one answer is the whole listing
            return {"processes": [row for row in answer if isinstance(row, dict)], "more": None}
        rows = answer.get("processes") if isinstance(answer, dict) else None
        more = answer.get("more") if isinstance(answer, dict) else None
        found = [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []
        return {"processes": found, "more": more if isinstance(more, str) and found else None}

    async def _list(
        self, state: str | None, limit: int, since: float | None, class_name: str | None, timeout: float | None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` rows, page after page (each answer is bounded in bytes by the worker; each waits at
        most ``timeout``)."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(rows) < limit:
            page = await self._list_page(state, limit - len(rows), since, class_name, cursor, timeout)
            rows += page["processes"]
            cursor = page["more"]
            if cursor is None:
                break
        return rows[:limit]

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
