"""The dashboard's state (one communicator and one asyncio controller on the server's loop) and its JSON API.

Every read and action goes through :class:`~process_comms.client.controller.RemoteProcessController` with the
dashboard's deadline; a library error becomes ``{"error", "error_type"}`` with the status it means
(the table is in :mod:`process_comms.dashboard`'s docstring). Messages are scrubbed of broker passwords.
Given a store (``Dashboard(settings, store=...)``, which ``process-comms dashboard --store URL`` opens
read-only), the record queries no worker answers are read from it, and the answer says so (``source``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypedDict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .. import defaults
from ..client.controller import RemoteProcessController
from ..client.records import FROM_STORE, NO_RECORDS_WORKER, RecordStore
from ..errors import (
    BrokerUnavailable,
    CommunicatorClosed,
    EncodeError,
    InvalidPid,
    InvalidTask,
    ProcessCommsError,
    ProcessUnreachable,
    RemoteError,
    StoreUnavailable,
    TaskRejected,
)
from ..errors import TimeoutError as PCTimeoutError
from ..transports.rmq import RmqCommunicator
from ..wire.listing import ACTIVE_STATES
from ..wire.messages import parse_pid
from ._auth import COOKIE, Guard
from ._body import BadRequest, read_json_body
from ._settings import DashboardSettings
from .events import EventHub
from .metrics import CONTENT_TYPE_LATEST, DashboardMetrics
from .queues import QueueDepth, inspect_queue

__all__ = ["ACTIONS", "MAX_LIMIT", "MAX_ROWS", "WORKERS_WITHIN", "BadRequest", "Dashboard", "JSON", "error_response"]

#: What ``POST /api/processes/{pid}/{action}`` may ask.
ACTIONS = ("pause", "play", "kill")
#: Seconds the workers have to answer ``GET /api/queues`` (a broadcast: every worker answers).
WORKERS_WITHIN = 1.0
#: Largest page of ``GET /api/processes``.
MAX_LIMIT = 1000
#: Rows the fleet lists at most (the records service's cap): offset + limit may not pass it.
MAX_ROWS = 10_000


#: Answers of ``active=`` and ``reverse=`` that mean yes (and no).
_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")

Handler = Callable[[Request], Awaitable[Response]]


#: HTTP status of each library error, most specific first.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (BadRequest, 400),
    (InvalidPid, 400),
    (EncodeError, 400),
    (InvalidTask, 400),
    (ProcessUnreachable, 404),
    (TaskRejected, 422),
    (RemoteError, 502),
    (BrokerUnavailable, 503),
    (StoreUnavailable, 503),
    (CommunicatorClosed, 503),
    (PCTimeoutError, 504),
    (TimeoutError, 504),
)


class JSON(JSONResponse):
    """A JSON response that writes UUIDs, tuples and other non-JSON values as strings."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=str, separators=(",", ":")).encode("utf-8")


def error_response(message: str, error_type: str, status: int, headers: dict[str, str] | None = None) -> JSON:
    """The API's error: ``{"error", "error_type"}`` with ``status``."""
    return JSON({"error": " ".join(message.split()), "error_type": error_type}, status, headers)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name!r} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name!r} must be between {low} and {high}, got {value}")
    return value


def _bool_param(request: Request, name: str) -> bool:
    text = (request.query_params.get(name) or "").lower()
    if text not in _YES + _NO:
        raise BadRequest(f"{name!r} must be true or false, got {text!r}")
    return text in _YES


class _Filters(TypedDict, total=False):
    """The keyword filters of ``list_processes_page`` and ``list_processes``."""

    states: list[str]
    label: str
    sort: str
    reverse: bool


def _list_filters(request: Request) -> tuple[str | None, _Filters]:
    """``state`` (repeatable; ``active`` adds the unended states) and the keyword filters ``label``, ``sort`` and
    ``reverse`` of ``list_processes_page``: each keyword passed only when given (one state goes as ``state``)."""
    states = [state for state in request.query_params.getlist("state") if state]
    if _bool_param(request, "active"):
        states += [state for state in ACTIVE_STATES if state not in states]
    keywords: _Filters = {}
    if len(states) > 1:
        keywords["states"] = states
    label = request.query_params.get("label") or None
    sort = request.query_params.get("sort") or None
    if label is not None:
        keywords["label"] = label
    if sort is not None:
        keywords["sort"] = sort
    if _bool_param(request, "reverse"):
        keywords["reverse"] = True
    return (states[0] if len(states) == 1 else None), keywords


class Dashboard:
    """What one dashboard holds: its settings, communicator, controller, live events and metrics."""

    def __init__(self, settings: DashboardSettings, store: RecordStore | None = None) -> None:
        """``store`` (opened and closed by the caller) answers the record queries that no worker answers."""
        self.settings = settings.check()
        self.store = store
        self.metrics = DashboardMetrics()
        self.hub = EventHub(on_state=self.metrics.saw_transition)
        self.guard = Guard(self.settings)
        self._comm: RmqCommunicator | None = None
        self._controller: RemoteProcessController | None = None

    @property
    def controller(self) -> RemoteProcessController:
        """The asyncio controller (on the server's loop)."""
        if self._controller is None:
            raise CommunicatorClosed("the dashboard is not connected to the broker")
        return self._controller

    async def open(self) -> Dashboard:
        """Connect to the broker on the running loop and subscribe to the state broadcasts."""
        s = self.settings
        comm = RmqCommunicator(
            s.urls,
            message_exchange=s.message_exchange,
            task_exchange=s.task_exchange,
            task_queue=s.task_queue_name,
            testing_mode=s.testing_mode,
            connect_timeout=min(s.timeout, defaults.CONNECT_TIMEOUT),
        )
        await comm.connect()
        self._comm = comm
        self._controller = RemoteProcessController(
            comm, rpc_timeout=s.timeout, task_timeout=s.timeout, store=self.store
        )
        try:
            await self.hub.start(comm)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """End the event streams and close the communicator; idempotent."""
        await self.hub.close()
        comm, self._comm, self._controller = self._comm, None, None
        if comm is not None:
            await comm.close()

    # -- guards -------------------------------------------------------------------------------------
    def refuse_action(self, request: Request) -> JSON | None:
        """The error response if ``request`` may not act (cross-site, or without the token), else None."""
        origin = self.guard.cross_site(request)
        if origin is not None:
            return error_response(f"cross-site request from {origin!r} refused", "Forbidden", 403)
        if not self.guard.may_act(request):
            if self.guard.role(request) is not None:
                return error_response("the read-only token cannot pause, play or kill", "Forbidden", 403)
            return _unauthorized("this action needs the dashboard's token: 'Authorization: Bearer <token>'")
        return None

    def reading(self, handler: Handler) -> Handler:
        """``handler``, answering 401 first to a request that may not read (reads need a token: see ``_auth.py``)."""

        async def guarded(request: Request) -> Response:
            if not self.guard.may_read(request):
                return _unauthorized("reading needs a token: 'Authorization: Bearer <token>' or log in on the page")
            return await handler(request)

        return guarded

    async def login(self, request: Request) -> Response:
        """``POST /api/login`` ``{"token": T}``: the session cookie of T's role (the page's way to carry it)."""
        origin = self.guard.cross_site(request)
        if origin is not None:
            return error_response(f"cross-site request from {origin!r} refused", "Forbidden", 403)
        try:
            token = (await read_json_body(request)).get("token")
        except BadRequest as exc:
            return self.failure(exc)
        role = self.guard.role_of_token(token) if isinstance(token, str) else None
        if role is None:
            return _unauthorized("wrong token")
        answer = JSON({"role": role})
        answer.set_cookie(COOKIE, self.guard.cookie(role), httponly=True, samesite="strict", path="/")
        return answer

    async def logout(self, _request: Request) -> Response:
        """``POST /api/logout``: forget the session cookie."""
        answer = JSON({"role": None})
        answer.delete_cookie(COOKIE, httponly=True, samesite="strict", path="/")
        return answer

    def failure(self, exc: BaseException) -> JSON:
        """The API's answer to an error raised by a call (scrubbed of broker passwords)."""
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        text = str(exc) or type(exc).__name__
        if isinstance(exc, ProcessUnreachable) and NO_RECORDS_WORKER in text and self.store is None:
            status = 503  # no worker is up and no store to ask: the service is unavailable, the pid may exist
        return error_response(self.settings.scrub(text), type(exc).__name__, status)

    # -- the endpoints ------------------------------------------------------------------------------
    async def info(self, request: Request) -> Response:
        """``GET /api/info``."""
        s = self.settings
        return JSON(
            {
                "broker": s.masked_broker,
                "message_exchange": s.message_exchange,
                "task_exchange": s.task_exchange,
                "task_queue": s.task_queue_name,
                "timeout": s.timeout,
                "actions_need_token": s.actions_need_token,
                "reads_need_token": s.reads_need_token,
                "role": self.guard.role(request),
                "max_rows": MAX_ROWS,
            }
        )

    async def processes(self, request: Request) -> Response:
        """``GET /api/processes``: one page of summaries, newest first: at most ``limit`` rows and the workers' byte
        budget, ``next`` the ``cursor`` of the next page (None: no more); with ``offset`` (> 0) the rows from there,
        gathered page by page (``next`` is then None)."""
        try:
            limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
            offset = _int_param(request, "offset", 0, 0, MAX_ROWS - limit)
            cursor = request.query_params.get("cursor") or None
            if cursor is not None and offset:
                raise BadRequest("give 'cursor' or 'offset', not both")
            since_text = request.query_params.get("since") or None
            try:
                since = None if since_text is None else float(since_text)
            except ValueError:
                raise BadRequest(f"'since' must be epoch seconds, got {since_text!r}") from None
            state, keywords = _list_filters(request)
            class_name = request.query_params.get("class") or None
            timeout = self.settings.timeout
            with self.metrics.timed(self.metrics.queries, query="list"):
                if offset == 0:
                    one = await self.controller.list_processes_page(
                        state, limit, since, class_name, cursor, timeout, **keywords
                    )
                    page, more = one["processes"], one["more"]
                else:
                    wanted = min(offset + limit + 1, MAX_ROWS)  # one more than the page: is there a next page?
                    rows = await self.controller.list_processes(state, wanted, since, class_name, timeout, **keywords)
                    page, more = rows[offset : offset + limit], None
                    has_more = len(rows) > offset + limit
        except ProcessCommsError as exc:
            return self.failure(exc)
        for row in page:
            row["pid"] = str(row.get("pid"))
        if offset == 0:
            has_more = more is not None
        answer = {"processes": page, "offset": offset, "limit": limit, "has_more": has_more, "next": more}
        source = one.get("source") if offset == 0 else rows.source
        if source == FROM_STORE:  # no worker answered: say where the page came from
            reason = one.get("source_reason") if offset == 0 else rows.source_reason
            answer.update(source=source, source_reason=self.settings.scrub(str(reason)))
        return JSON(answer)

    async def process(self, request: Request) -> Response:
        """``GET /api/processes/{pid}``: the whole record."""
        pid = parse_pid(request.path_params["pid"])
        try:
            with self.metrics.timed(self.metrics.queries, query="get"):
                record = await self.controller.get_process(pid, self.settings.timeout)
        except ProcessCommsError as exc:
            return self.failure(exc)
        record["pid"] = str(record.get("pid", pid))
        return JSON(record)

    async def act(self, request: Request) -> Response:
        """``POST /api/processes/{pid}/{action}``: pause, play or kill, with the dashboard's deadline."""
        refused = self.refuse_action(request)
        if refused is not None:
            return refused
        action = str(request.path_params["action"])
        if action not in ACTIONS:
            return error_response(f"unknown action {action!r}: expected pause, play or kill", "NotFound", 404)
        pid = parse_pid(request.path_params["pid"])
        try:
            body = await read_json_body(request)
            message = body.get("message")
            if message is not None and not isinstance(message, str):
                raise BadRequest("'message' must be a string")
            timeout = self.settings.timeout
            with self.metrics.timed(self.metrics.control, action=action):
                if action == "pause":
                    result = await self.controller.pause_process(pid, message, timeout)
                elif action == "play":
                    result = await self.controller.play_process(pid, timeout)
                else:
                    force = body.get("force", False)
                    if not isinstance(force, bool):
                        raise BadRequest("'force' must be true or false")
                    result = await self.controller.kill_process(pid, message, force, timeout)
        except ProcessCommsError as exc:
            return self.failure(exc)
        answer = {"pid": str(pid), "action": action, "result": bool(result)}
        self.hub.publish({"type": "action", **answer, "time": time.time()})
        return JSON(answer)

    async def queues(self, _request: Request) -> Response:
        """``GET /api/queues``: the task queue's depth and consumers, and the workers that answer."""
        try:
            queue, workers = await asyncio.gather(self._inspect(), self._workers())
        except ProcessCommsError as exc:
            return self.failure(exc)
        return JSON({"queues": [queue], "workers": workers})

    async def _workers(self) -> dict[str, object]:
        """The workers that answer within :data:`WORKERS_WITHIN` (host, queues, slots used/total, uptime)."""
        rows = await self.controller.list_workers(WORKERS_WITHIN)
        self.metrics.set_worker_slots(rows)
        return {"available": True, "within": WORKERS_WITHIN, "rows": rows}

    async def _inspect(self) -> QueueDepth:
        s = self.settings
        queue = await inspect_queue(s.urls, s.task_queue_name, s.timeout)
        self.metrics.queue_messages.labels(queue=queue["queue"]).set(queue["messages"])
        self.metrics.queue_consumers.labels(queue=queue["queue"]).set(queue["consumers"])
        return queue

    async def events(self, request: Request) -> Response:
        """``GET /api/events``: the server-sent-events stream."""
        return StreamingResponse(
            self.hub.stream(request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def prometheus(self, _request: Request) -> Response:
        """``GET /metrics``: refresh the gauges (a listing and a queue declare, each bounded), then render."""
        m = self.metrics
        try:
            with m.timed(m.queries, query="list"):
                rows = await self.controller.list_processes(None, MAX_ROWS, None, None, self.settings.timeout)
            m.set_processes([str(row.get("state_name") or "") for row in rows])
            m.scrape_ok.labels(source="records").set(1)
        except ProcessCommsError:
            m.scrape_ok.labels(source="records").set(0)  # e.g. no worker up: the last counts stay
        try:
            await self._inspect()
            m.scrape_ok.labels(source="queue").set(1)
        except ProcessCommsError:
            m.scrape_ok.labels(source="queue").set(0)
        try:
            await self._workers()
        except ProcessCommsError:
            pass  # the slots gauges keep their last values
        m.streams.set(self.hub.streams)
        return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


def _unauthorized(message: str) -> JSON:
    return error_response(message, "Unauthorized", 401, {"WWW-Authenticate": 'Bearer realm="process-comms"'})
