"""The asyncio controller: all control logic, once. The thread controller is a thin facade over it.

Each public coroutine hops onto the communicator's loop (unless it is already there) and back, so it
never blocks the caller's event loop; results are flat values and every call has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

from .. import defaults
from .._compat import TIMEOUT_ERRORS
from ..errors import EncodeError, ProcessUnreachable, RemoteError, TaskRejected
from ..errors import TimeoutError as PCTimeoutError
from ..transports.base import AsyncCommunicator, BroadcastFilter
from ..transports.loop import AsyncFn, ControllerFuture, LoopThread, with_deadline
from ..transports.threaded import ThreadCommunicator
from ..wire.messages import (
    ANSWER_PREFIX,
    RELEASE_KEY,
    TERMINAL_STATES,
    Intent,
    MessageBuilder,
    MessageType,
    ObjectLoader,
    Pid,
    create_continue_body,
    create_create_body,
    create_launch_body,
    is_lost,
    is_terminal,
    state_from_subject,
    state_name,
    wire_text,
    with_launch_options,
)
from ..wire.types import WORKERS_SUBJECT, ProcessPage, ProcessRecord, ProcessStatus, WorkerInfo
from ._kiwipy import KiwipyAdapter, is_foreign, unwrap_ours
from ._plumpy import ControllerApi, PlumpyShape, check_api
from .records import ProcessListing, RecordQueries, RecordStore, epoch, lost_error

__all__ = ["RemoteProcessController", "TERMINAL_STATES"]

T = TypeVar("T")


class _ThreadFacing(Protocol):
    """Ours as a thread sees it (transports/threaded.py ``ThreadCommunicator``, client/_kiwipy.py ``KiwipyPortal``):
    a loop thread that runs coroutine functions, the async core on it, a blocking close."""

    @property
    def loop_thread(self) -> LoopThread: ...

    @property
    def core(self) -> AsyncCommunicator: ...

    def submit(self, fn: AsyncFn[T], *args: object) -> ControllerFuture[T]: ...

    def close(self) -> None: ...


class RemoteProcessController(RecordQueries):
    """Control remote processes from asyncio code: every method is a coroutine returning a flat value."""

    def __init__(
        self,
        communicator: object,
        *,
        rpc_timeout: float | None = None,
        task_timeout: float | None = None,
        store: RecordStore | None = None,
        api: ControllerApi = "process_comms",
    ) -> None:
        """``communicator`` is what :func:`process_comms.connect` returns (or an :class:`AsyncCommunicator`), or
        any kiwipy ``Communicator`` (kiwipy's thread or asyncio RabbitMQ ones, ``plumpy.LoopCommunicator``,
        aiida-core's ZeroMQ one), driven through an adapter that keeps flat results, deadlines and typed
        errors (client/_kiwipy.py; docs/migrating.md). ``store`` (e.g. ``open_record_store(url)``; not closed
        here) answers the record queries that no worker answers (client/records.py).

        ``api="plumpy"``: plumpy's calls await the levels plumpy's asyncio controller awaits, with no deadline
        unless ``rpc_timeout``/``task_timeout`` or a call's ``timeout`` asks (client/_plumpy.py); the
        communicator must be kiwipy-shaped (``connect(url, api="kiwipy")``, kiwipy's own).
        """
        #: plumpy's shapes for plumpy's calls (``api="plumpy"``), else None.
        self._plumpy = PlumpyShape(communicator, rpc_timeout, task_timeout) if check_api(api) else None
        self._communicator = communicator
        self._store = store
        #: What the calls go through: ours (also from inside a plumpy LoopCommunicator) or the adapter.
        self._comm = unwrap_ours(communicator)
        self._adapter = KiwipyAdapter(self._comm) if is_foreign(self._comm) else None
        ours = self._comm if isinstance(self._comm, ThreadCommunicator) else None  # its timeouts are the defaults
        self.rpc_timeout = (
            rpc_timeout if rpc_timeout is not None else ours.rpc_timeout if ours else defaults.RPC_TIMEOUT
        )
        self.task_timeout = (
            task_timeout if task_timeout is not None else ours.task_timeout if ours else defaults.TASK_TIMEOUT
        )

    @property
    def communicator(self) -> object:
        """The communicator this controller sends through."""
        return self._communicator

    async def close(self) -> None:
        """Close the communicator this controller sends through, as the thread facade's ``close`` does; idempotent."""
        comm = self._adapter or self._comm
        if isinstance(comm, AsyncCommunicator):
            await comm.close()
        else:  # a thread-facing communicator: its close joins its loop thread, so not from this loop
            await asyncio.to_thread(cast(_ThreadFacing, comm).close)

    async def __aenter__(self) -> RemoteProcessController:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def _core(self) -> AsyncCommunicator:
        comm = self._adapter or self._comm
        return comm if isinstance(comm, AsyncCommunicator) else cast(_ThreadFacing, comm).core

    async def _run(self, fn: AsyncFn[T], *args: object) -> T:
        """Run ``await fn(*args)`` on the communicator's loop without blocking the caller's loop (over a
        kiwipy communicator: on the caller's loop, the adapter keeps the communicator's calls off it)."""
        comm = self._comm
        if self._adapter is not None or isinstance(comm, AsyncCommunicator):
            return await fn(*args)
        facing = cast(_ThreadFacing, comm)  # ours from a thread: a ThreadCommunicator or a KiwipyPortal
        if asyncio.get_running_loop() is facing.loop_thread.loop:
            return await fn(*args)
        return await asyncio.wrap_future(facing.submit(fn, *args))

    # -- the core: coroutines that run on the communicator's loop -------------------------------
    async def _rpc(self, pid: Pid, msg: MessageType, timeout: float | None) -> Any:
        deadline = self.rpc_timeout if timeout is None else timeout
        return await with_deadline(self._core.rpc_send(pid, msg), deadline, f"{msg['intent']} of process {pid}")

    async def _task(self, body: MessageType, no_reply: bool, timeout: float | None, queue: str | None = None) -> Any:
        deadline = self.task_timeout if timeout is None else timeout
        send = (
            self._core.task_send(body, no_reply) if queue is None else self._core.task_send(body, no_reply, queue=queue)
        )
        return await with_deadline(send, deadline, f"{body['task']} task")

    async def _broadcast(
        self, body: object, subject: str, answers_within: float | None = None
    ) -> dict[object, object] | None:
        if answers_within is None:
            await with_deadline(
                self._core.broadcast_send(body, subject=subject), self.rpc_timeout, f"{subject} broadcast"
            )
            return None
        cid, answers = str(uuid.uuid4()), dict[object, object]()

        def on_answer(
            _comm: object, result: object, sender: object, answer_subject: object, correlation_id: object
        ) -> None:
            if correlation_id == cid and answer_subject == f"{ANSWER_PREFIX}{subject}":
                answers[sender] = result

        identifier = await self._core.add_broadcast_subscriber(on_answer)
        try:
            await with_deadline(
                self._core.broadcast_send(body, subject=subject, correlation_id=cid),
                self.rpc_timeout,
                f"{subject} broadcast",
            )
            await asyncio.sleep(answers_within)  # the collection window: answers are counted until it closes
        finally:
            await self._core.remove_broadcast_subscriber(identifier)
        return answers

    async def _execute(
        self,
        process_class: object,
        init_args: Sequence[object] | None,
        init_kwargs: Mapping[str, object] | None,
        loader: ObjectLoader | None,
        nowait: bool,
        no_reply: bool,
        timeout: float | None,
        options: Mapping[str, object] | None = None,
    ) -> object:
        create = create_create_body(process_class, init_args, init_kwargs, persist=True, loader=loader)
        create.update(options or {})  # our launch options, if any (wire/messages.py)
        pid = await self._task(create, False, timeout)
        return await self._task(create_continue_body(pid, nowait=nowait), no_reply, timeout)

    async def _bulk(self, pids: Iterable[Pid], msg: MessageType, timeout: float | None) -> dict[Pid, object]:
        pids = list(pids)
        send = self._status if msg["intent"] == Intent.STATUS else lambda pid, t: self._rpc(pid, msg, t)
        results = await asyncio.gather(*(send(pid, timeout) for pid in pids), return_exceptions=True)
        return dict(zip(pids, results, strict=True))

    async def _wait_for(self, pid: Pid, timeout: float | None, poll_interval: float) -> str:
        """Poll ``pid``'s status until its holder or its record says it ended. A ``state_changed`` broadcast
        is a hint, not a fact (anyone allowed to publish can send one): it only makes the next look come at
        once. A process the record says was lost raises :class:`ProcessLost`."""
        hint = asyncio.Event()
        seen: dict[str, str] = {}  # the last terminal state broadcast, for a peer without records (plumpy)

        def on_state(_comm: object, _body: object, _sender: object, subject: object, _cid: object) -> None:
            state = state_from_subject(subject)
            if state is not None and is_terminal(state):
                seen["state"] = state
                hint.set()

        listener = BroadcastFilter(on_state, sender=pid)
        identifier = await self._core.add_broadcast_subscriber(listener)

        async def poll() -> str:
            while True:
                hint.clear()
                try:
                    status = await self._rpc(pid, MessageBuilder.status(), poll_interval * 4)
                except PCTimeoutError:
                    continue  # one unanswered poll is not the end: only the overall deadline is
                except ProcessUnreachable as exc:
                    # the route goes when the process ends, after its record says how it ended
                    ended = await self._ended_state(pid, exc, seen, poll_interval)
                    if ended is not None:
                        return ended
                else:
                    if is_lost(status):
                        raise lost_error(pid, status)
                    state = state_name(status.get("state", ""))
                    if is_terminal(state):
                        return state
                with contextlib.suppress(*TIMEOUT_ERRORS):  # no hint within the interval: look anyway
                    await asyncio.wait_for(hint.wait(), poll_interval)

        try:
            deadline = self.task_timeout if timeout is None else timeout
            return await with_deadline(poll(), deadline, f"waiting for process {pid} to end")
        finally:
            await self._core.remove_broadcast_subscriber(identifier)

    # -- plumpy's API ----------------------------------------------------------------------------
    async def get_status(self, pid: Pid, timeout: float | None = None) -> ProcessStatus:
        """The status dict of process ``pid`` (``ctime``, ``paused``, ``process_string``, ``state``, ...).

        For a process no worker holds (ended or parked) it comes from the fleet's record, with ``record``
        True and its ``outputs`` or ``exception``; ``ProcessUnreachable`` only for a pid with no record.
        """
        if self._plumpy is not None:
            return cast(ProcessStatus, await self._plumpy.rpc_levels(pid, MessageBuilder.status(), 1, timeout))
        return await self._run(self._status, pid, timeout)

    async def pause_process(
        self, pid: Pid, msg_text: str | None = None, timeout: float | None = None, *, release: bool = False
    ) -> bool:
        """Pause ``pid`` at its next await point: True if paused, False if it had already ended (also when
        no worker holds it any more and its record says so; ``ProcessUnreachable`` for a pid with no record).

        ``release=True`` (process_comms workers, persisted processes): also checkpoint it and stop running
        it, so it holds no worker; ``play_process(pid, resume=True)`` continues it on any worker.
        """
        wire_text(msg_text, "pause text", EncodeError)  # a str or None (plumpy's msg_text): checked before sending
        message = MessageBuilder.pause(msg_text)
        if release:
            message[RELEASE_KEY] = True
        elif self._plumpy is not None:
            return cast(
                bool, await self._plumpy.rpc_levels(pid, message, 2, timeout)
            )  # plumpy\'s shape: what plumpy returns
        return await self._run(self._control, pid, message, timeout)

    async def play_process(self, pid: Pid, timeout: float | None = None, *, resume: bool = False) -> bool:
        """Resume ``pid`` (True, also when it has ended: as plumpy, an ended process is not paused); with
        ``resume=True`` a released process (no longer running anywhere) is first continued from its
        checkpoint on a worker."""
        if self._plumpy is not None and not resume:
            return cast(
                bool, await self._plumpy.rpc_levels(pid, MessageBuilder.play(), 2, timeout)
            )  # plumpy\'s shape: what plumpy returns
        return await self._run(self._play, pid, timeout, resume)

    async def _play(self, pid: Pid, timeout: float | None, resume: bool) -> bool:
        try:
            played: bool = await self._rpc(pid, MessageBuilder.play(), timeout)
            return played
        except ProcessUnreachable as exc:
            if not resume:
                return await self._ended(pid, exc, timeout, True)
        try:
            await self._task(create_continue_body(pid, nowait=True), False, timeout)
        except (RemoteError, TaskRejected) as exc:
            raise ProcessUnreachable(f"process {pid} is not running and cannot be continued: {exc}") from None
        played = await self._rpc(pid, MessageBuilder.play(), timeout)  # it was continued paused: play it
        return played

    async def kill_process(
        self, pid: Pid, msg_text: str | None = None, force_kill: bool = False, timeout: float | None = None
    ) -> bool:
        """Kill ``pid``: True if killed (now or before), False if it had ended otherwise.

        A process no worker runs (parked, or orphaned by a dead worker) is marked killed in its record, and
        no worker runs it again; a pid the fleet does not know raises ``ProcessUnreachable``, but a task of
        that pid still queued is dropped by the worker that takes it.
        """
        if self._plumpy is not None:
            message = MessageBuilder.kill(msg_text, force_kill)
            return cast(
                bool, await self._plumpy.rpc_levels(pid, message, 2, timeout)
            )  # plumpy\'s shape: what plumpy returns
        return await self._run(self._kill, pid, MessageBuilder.kill(msg_text, force_kill), timeout)

    async def pause_all(
        self, msg_text: str | None, *, answers_within: float | None = None
    ) -> dict[object, object] | None:
        """Broadcast a pause to every process (fire and forget, as plumpy).

        With ``answers_within`` (seconds), return ``{pid: result}`` of the processes that answered in that
        window (process_comms workers answer; plumpy ones do not).
        """
        wire_text(msg_text, "pause text", EncodeError)  # a str or None (plumpy's msg_text): checked before sending
        if self._plumpy is not None and answers_within is None:
            await self._plumpy.broadcast_async(MessageBuilder.pause(msg_text), Intent.PAUSE)
            return None
        return await self._run(self._broadcast, MessageBuilder.pause(msg_text), Intent.PAUSE, answers_within)

    async def play_all(self, *, answers_within: float | None = None) -> dict[object, object] | None:
        """Broadcast a play to every process; with ``answers_within``, ``{pid: result}`` of those that answered."""
        if self._plumpy is not None and answers_within is None:
            await self._plumpy.broadcast_async(None, Intent.PLAY)
            return None
        return await self._run(self._broadcast, None, Intent.PLAY, answers_within)

    async def kill_all(
        self, msg_text: str | None, *, answers_within: float | None = None
    ) -> dict[object, object] | None:
        """Broadcast a kill to every process; with ``answers_within``, ``{pid: result}`` of those that answered."""
        if self._plumpy is not None and answers_within is None:
            await self._plumpy.broadcast_async(MessageBuilder.kill(msg_text), Intent.KILL)
            return None
        return await self._run(self._broadcast, MessageBuilder.kill(msg_text), Intent.KILL, answers_within)

    async def launch_process(
        self,
        process_class: object,
        init_args: Sequence[object] | None = None,
        init_kwargs: Mapping[str, object] | None = None,
        persist: bool = False,
        loader: ObjectLoader | None = None,
        nowait: bool = False,
        no_reply: bool = False,
        timeout: float | None = None,
        *,
        queue: str | None = None,
        label: str | None = None,
        time_limit: float | None = None,
    ) -> object:
        """Launch ``process_class`` on a worker: its pid with ``nowait``, else its outputs.

        ``queue``: a named task queue (``"gpu"``), consumed by the workers started with ``--queue gpu``.
        ``label``: a name to find the process by (at most ``LABEL_MAX_CHARS`` characters), kept in its record.
        ``time_limit``: seconds after which its worker kills it (paused or not; a worker that continues it keeps
        the deadline). Both travel where a plumpy worker ignores them (wire/messages.py);
        ``InvalidLaunchOption`` if out of bounds, before anything is sent.
        """
        body = create_launch_body(process_class, init_args, init_kwargs, persist, loader, nowait)
        body = with_launch_options(body, label, time_limit)
        if self._plumpy is not None and queue is None:
            return await self._plumpy.task_levels(body, no_reply, timeout)
        return await self._run(self._task, body, no_reply, timeout, queue)

    async def continue_process(
        self,
        pid: Pid,
        tag: str | None = None,
        nowait: bool = False,
        no_reply: bool = False,
        timeout: float | None = None,
        *,
        queue: str | None = None,
    ) -> object:
        """Continue ``pid`` from its checkpoint on a worker: the pid with ``nowait``, else its outputs.

        ``queue``: a named task queue, as for :meth:`launch_process`.
        """
        if self._plumpy is not None and queue is None:
            return await self._plumpy.task_levels(create_continue_body(pid, tag, nowait), no_reply, timeout)
        return await self._run(self._task, create_continue_body(pid, tag, nowait), no_reply, timeout, queue)

    async def execute_process(
        self,
        process_class: object,
        init_args: Sequence[object] | None = None,
        init_kwargs: Mapping[str, object] | None = None,
        loader: ObjectLoader | None = None,
        nowait: bool = False,
        no_reply: bool = False,
        timeout: float | None = None,
        *,
        label: str | None = None,
        time_limit: float | None = None,
    ) -> object:
        """Create a persisted process, then continue it: survives this interpreter's death. ``label`` and
        ``time_limit`` as for :meth:`launch_process` (the limit counts from its creation)."""
        if self._plumpy is not None and label is None and time_limit is None:  # plumpy's calls: plumpy's shapes
            args = (process_class, init_args, init_kwargs, loader, nowait, no_reply, timeout)
            return await self._plumpy.execute_async(*args)
        options = with_launch_options({}, label, time_limit)
        return await self._run(
            self._execute, process_class, init_args, init_kwargs, loader, nowait, no_reply, timeout, options
        )

    async def task_send(self, message: MessageType, no_reply: bool = False, timeout: float | None = None) -> object:
        """Send a raw task body; its final result."""
        if self._plumpy is not None:
            return await self._plumpy.task_levels(message, no_reply, timeout)
        return await self._run(self._task, message, no_reply, timeout)

    # -- beyond plumpy -----------------------------------------------------------------------------
    async def get_status_many(self, pids: Iterable[Pid], timeout: float | None = None) -> dict[Pid, object]:
        """Status of many pids at once: ``{pid: status dict or the exception}``, under one deadline."""
        return await self._run(self._bulk, pids, MessageBuilder.status(), timeout)

    async def pause_many(
        self, pids: Iterable[Pid], msg_text: str | None = None, timeout: float | None = None
    ) -> dict[Pid, object]:
        """Pause many pids: ``{pid: result or exception}``."""
        return await self._run(self._bulk, pids, MessageBuilder.pause(msg_text), timeout)

    async def play_many(self, pids: Iterable[Pid], timeout: float | None = None) -> dict[Pid, object]:
        """Play many pids: ``{pid: result or exception}``."""
        return await self._run(self._bulk, pids, MessageBuilder.play(), timeout)

    async def kill_many(
        self, pids: Iterable[Pid], msg_text: str | None = None, force_kill: bool = False, timeout: float | None = None
    ) -> dict[Pid, object]:
        """Kill many pids: ``{pid: result or exception}``."""
        return await self._run(self._bulk, pids, MessageBuilder.kill(msg_text, force_kill), timeout)

    async def wait_for_process(self, pid: Pid, timeout: float | None = None, poll_interval: float = 1.0) -> str:
        """Wait until ``pid`` reaches a terminal state; return it (``finished``, ``excepted`` or ``killed``).

        Polls its status (its holder's answer, else its record's); a ``state_changed`` broadcast only makes
        the next look come at once. Raises :class:`ProcessLost` if its worker stopped or died without handing
        it back, :class:`ProcessUnreachable` if the process is gone before its end was seen.
        """
        return await self._run(self._wait_for, pid, timeout, poll_interval)

    async def list_workers(self, within: float = 1.0) -> list[WorkerInfo]:
        """The process_comms workers that answer within ``within`` seconds, sorted by host and OS pid: each
        ``worker`` (its id), ``host``, ``pid``, ``uptime`` (s), ``processes``, ``consuming``, ``queues``
        ({queue: consuming}) and ``slots`` ({queue: {"used": n, "total": n or None for no limit}})."""
        answers = await self._run(self._broadcast, None, WORKERS_SUBJECT, within) or {}
        found = [cast(WorkerInfo, info) for info in answers.values() if isinstance(info, dict)]
        return sorted(found, key=lambda info: (str(info.get("host")), str(info.get("pid")), str(info.get("worker"))))

    # -- process records (docs/fleet.md) -----------------------------------------------------------
    async def get_process(self, pid: Pid, timeout: float | None = None) -> ProcessRecord:
        """The whole record of ``pid`` (a JSON-safe dict: class, inputs, state history, host, progress, outputs,
        exception with traceback, log lines), from the fleet; ``ProcessUnreachable`` if it has none. A kill
        requested for a pid no worker has run is no process: its ``state_name`` is ``kill_requested``."""
        return await self._run(self._get_record, pid, timeout)

    async def get_outputs(self, pid: Pid, timeout: float | None = None) -> dict[str, object] | None:
        """The outputs of ``pid`` (also of a ``nowait`` launch): None while it runs; raises ``RemoteError``
        (with ``remote_traceback``) if it excepted and ``ProcessKilled`` if it was killed."""
        return await self._run(self._outputs, pid, timeout)

    async def list_processes(
        self,
        state: str | None = None,
        limit: int = 100,
        since: float | datetime.datetime | None = None,
        class_name: str | None = None,
        timeout: float | None = None,
        *,
        states: Sequence[str] | None = None,
        label: str | None = None,
        sort: str | None = None,
        reverse: bool = False,
    ) -> ProcessListing:
        """Summaries of the fleet's processes, newest first, live and ended (pid, class, state_name, paused,
        status, progress, host, label, ctime, mtime, live); filter by state name (``state``, or any of ``states``;
        ``ACTIVE_STATES`` for those that have not ended), creation time, ``module:Name`` and ``label`` (a
        case-sensitive substring of the process's label). ``sort``: ``age`` (default, newest first), ``state``,
        ``class`` or ``label``; ``reverse`` turns it round. Gathered page by page (:meth:`list_processes_page`):
        each answer is bounded in bytes, the list by ``limit``; an order other than newest first sorts the newest
        ``limit`` matching processes. Its ``source`` is ``"store"`` when no worker answered and the store did."""
        query = self._query(states, label, sort, reverse)
        return await self._run(self._list, state, limit, epoch(since), class_name, timeout, query)

    async def list_processes_page(
        self,
        state: str | None = None,
        limit: int = 100,
        since: float | datetime.datetime | None = None,
        class_name: str | None = None,
        cursor: str | None = None,
        timeout: float | None = None,
        *,
        states: Sequence[str] | None = None,
        label: str | None = None,
        sort: str | None = None,
        reverse: bool = False,
    ) -> ProcessPage:
        """One page of :meth:`list_processes`: ``{"processes": [...], "more": str or None}``, at most ``limit`` rows
        and the worker's byte budget (1 MiB); pass ``more`` as ``cursor`` for the next page (None: no more). Only
        the default order (``age``, newest first) has a cursor: any other is one page of the newest ``limit``."""
        query = self._query(states, label, sort, reverse)
        return await self._run(self._list_page, state, limit, epoch(since), class_name, cursor, timeout, query)
