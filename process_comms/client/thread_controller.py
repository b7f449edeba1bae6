"""The blocking facade: each method hands the asyncio controller's coroutine function of the same name,
with its arguments, to the communicator's loop thread and returns a ``concurrent.futures.Future`` at
once (call ``.result(timeout)`` to block). No control logic lives here.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import cast

from ..transports.loop import ControllerFuture
from ..transports.threaded import ThreadCommunicator
from ..wire.messages import MessageType, ObjectLoader, Pid
from ..wire.types import ProcessPage, ProcessRecord, ProcessStatus, WorkerInfo
from ._kiwipy import KiwipyPortal, is_foreign, unwrap_ours
from ._plumpy import ControllerApi, check_api
from .controller import RemoteProcessController
from .records import ProcessListing, RecordStore

__all__ = ["RemoteProcessThreadController"]


class RemoteProcessThreadController:
    """Control remote processes from threads: every call returns a flat, deadline-bounded future.

    ``api="plumpy"`` gives a :class:`~process_comms.client._plumpy_thread.PlumpyThreadController` (plumpy's shapes).
    """

    def __new__(cls, communicator: object = None, **kwargs: object) -> RemoteProcessThreadController:
        """The plumpy-shaped controller for ``api="plumpy"``: plumpy's calls are its own, not this facade's."""
        if cls is RemoteProcessThreadController and check_api(kwargs.get("api", "process_comms")):
            from ._plumpy_thread import PlumpyThreadController  # it subclasses this class: imported when asked for

            return super().__new__(PlumpyThreadController)
        return super().__new__(cls)

    def __init__(
        self,
        communicator: object,
        *,
        rpc_timeout: float | None = None,
        task_timeout: float | None = None,
        store: RecordStore | None = None,
        api: ControllerApi = "process_comms",
    ) -> None:
        """``communicator`` is what :func:`process_comms.connect` returns (timeouts default to its own), or any
        kiwipy ``Communicator``: then the controller runs its coroutines on a loop thread of its own and
        drives the communicator through an adapter (client/_kiwipy.py); :meth:`close` closes both.
        ``store`` answers the record queries no worker answers (as the asyncio controller's).

        ``api="plumpy"``: plumpy's calls return what plumpy's ``RemoteProcessThreadController`` returns (the
        communicator's futures, nested per ``pending`` reply; its ``UnroutableError`` raised by the call; no
        deadline unless ``rpc_timeout``/``task_timeout`` or a call's ``timeout`` asks); the communicator must
        be kiwipy-shaped (``connect(url, api="kiwipy")``, kiwipy's own). Our keyword-only extras (``release``,
        ``resume``, ``queue``, ``answers_within``) and the calls plumpy lacks stay flat and bounded.
        """
        self._given = communicator
        inner = unwrap_ours(communicator)
        #: What the calls are submitted to: ours, or a loop thread of our own over a foreign communicator.
        self._communicator = KiwipyPortal(inner) if is_foreign(inner) else cast(ThreadCommunicator, inner)
        self._core = RemoteProcessController(
            self._communicator, rpc_timeout=rpc_timeout, task_timeout=task_timeout, store=store
        )
        check_api(api)  # "plumpy" made a PlumpyThreadController (__new__); another value is a ValueError

    @property
    def communicator(self) -> object:
        """The communicator this controller sends through (the one it was given)."""
        return self._given

    @property
    def rpc_timeout(self) -> float:
        """Default seconds to wait for a status/pause/play/kill answer."""
        return self._core.rpc_timeout

    @rpc_timeout.setter
    def rpc_timeout(self, value: float) -> None:
        self._core.rpc_timeout = value

    @property
    def task_timeout(self) -> float:
        """Default seconds to wait for a launch/continue/execute answer."""
        return self._core.task_timeout

    @task_timeout.setter
    def task_timeout(self, value: float) -> None:
        self._core.task_timeout = value

    def close(self) -> None:
        """Close the communicator (fails calls in flight with CommunicatorClosed); idempotent."""
        self._communicator.close()

    def __enter__(self) -> RemoteProcessThreadController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_status(self, pid: Pid, timeout: float | None = None) -> ControllerFuture[ProcessStatus]:
        """Future of the status dict of ``pid``."""
        return self._communicator.submit(self._core.get_status, pid, timeout)

    def pause_process(
        self, pid: Pid, msg_text: str | None = None, timeout: float | None = None, *, release: bool = False
    ) -> ControllerFuture[bool]:
        """Future of the pause result (True, or False if already ended); ``release=True`` also frees its worker."""
        return self._communicator.submit(lambda: self._core.pause_process(pid, msg_text, timeout, release=release))

    def play_process(self, pid: Pid, timeout: float | None = None, *, resume: bool = False) -> ControllerFuture[bool]:
        """Future of the play result (True, also for an ended process); ``resume=True`` first continues a
        released process."""
        return self._communicator.submit(lambda: self._core.play_process(pid, timeout, resume=resume))

    def kill_process(
        self, pid: Pid, msg_text: str | None = None, force_kill: bool = False, timeout: float | None = None
    ) -> ControllerFuture[bool]:
        """Future of the kill result (True if killed, False if it had ended otherwise)."""
        return self._communicator.submit(self._core.kill_process, pid, msg_text, force_kill, timeout)

    def pause_all(
        self, msg_text: str | None, *, answers_within: float | None = None
    ) -> ControllerFuture[dict[object, object] | None] | None:
        """Broadcast a pause to every process; returns at once (None, as plumpy).

        With ``answers_within`` (seconds): a future of ``{pid: result}`` for the processes that answered
        within that window (process_comms workers answer; plumpy ones do not).
        """
        return self._all(lambda: self._core.pause_all(msg_text, answers_within=answers_within), answers_within)

    def play_all(self, *, answers_within: float | None = None) -> ControllerFuture[dict[object, object] | None] | None:
        """Broadcast a play to every process; with ``answers_within``, a future of ``{pid: result}``."""
        return self._all(lambda: self._core.play_all(answers_within=answers_within), answers_within)

    def kill_all(
        self, msg_text: str | None, *, answers_within: float | None = None
    ) -> ControllerFuture[dict[object, object] | None] | None:
        """Broadcast a kill to every process; with ``answers_within``, a future of ``{pid: result}``."""
        return self._all(lambda: self._core.kill_all(msg_text, answers_within=answers_within), answers_within)

    def _all(
        self, broadcast: Callable[[], Awaitable[dict[object, object] | None]], answers_within: float | None
    ) -> ControllerFuture[dict[object, object] | None] | None:
        fut = self._communicator.submit(broadcast)
        return None if answers_within is None else fut

    def launch_process(
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
    ) -> ControllerFuture[object]:
        """Future of the launch: the pid with ``nowait``, else the outputs (None with ``no_reply``); ``queue``
        names a task queue; ``label`` and ``time_limit`` as the async controller's."""
        return self._communicator.submit(
            lambda: self._core.launch_process(
                process_class,
                init_args,
                init_kwargs,
                persist,
                loader,
                nowait,
                no_reply,
                timeout,
                queue=queue,
                label=label,
                time_limit=time_limit,
            )
        )

    def continue_process(
        self,
        pid: Pid,
        tag: str | None = None,
        nowait: bool = False,
        no_reply: bool = False,
        timeout: float | None = None,
        *,
        queue: str | None = None,
    ) -> ControllerFuture[object]:
        """Future of the continue: the pid with ``nowait``, else the outputs; ``queue`` names a task queue."""
        return self._communicator.submit(
            lambda: self._core.continue_process(pid, tag, nowait, no_reply, timeout, queue=queue)
        )

    def execute_process(
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
    ) -> ControllerFuture[object]:
        """Future of create-then-continue (works here; plumpy's deadlocks on its own loop thread)."""
        return self._communicator.submit(
            lambda: self._core.execute_process(
                process_class,
                init_args,
                init_kwargs,
                loader,
                nowait,
                no_reply,
                timeout,
                label=label,
                time_limit=time_limit,
            )
        )

    def task_send(
        self, message: MessageType, no_reply: bool = False, timeout: float | None = None
    ) -> ControllerFuture[object]:
        """Future of a raw task's result."""
        return self._communicator.submit(self._core.task_send, message, no_reply, timeout)

    def get_status_many(
        self, pids: Iterable[Pid], timeout: float | None = None
    ) -> dict[Pid, ControllerFuture[ProcessStatus]]:
        """``{pid: future of its status}``; wait for them all with :func:`process_comms.wait_all`."""
        return {pid: self.get_status(pid, timeout) for pid in pids}

    def pause_many(
        self, pids: Iterable[Pid], msg_text: str | None = None, timeout: float | None = None
    ) -> dict[Pid, ControllerFuture[bool]]:
        """``{pid: future of its pause}``."""
        return {pid: self.pause_process(pid, msg_text, timeout) for pid in pids}

    def play_many(self, pids: Iterable[Pid], timeout: float | None = None) -> dict[Pid, ControllerFuture[bool]]:
        """``{pid: future of its play}``."""
        return {pid: self.play_process(pid, timeout) for pid in pids}

    def kill_many(
        self, pids: Iterable[Pid], msg_text: str | None = None, force_kill: bool = False, timeout: float | None = None
    ) -> dict[Pid, ControllerFuture[bool]]:
        """``{pid: future of its kill}``."""
        return {pid: self.kill_process(pid, msg_text, force_kill, timeout) for pid in pids}

    def wait_for_process(
        self, pid: Pid, timeout: float | None = None, poll_interval: float = 1.0
    ) -> ControllerFuture[str]:
        """Future of the terminal state of ``pid`` (``finished``, ``excepted`` or ``killed``; ``ProcessLost`` if
        its worker stopped or died without handing it back)."""
        return self._communicator.submit(self._core.wait_for_process, pid, timeout, poll_interval)

    def get_process(self, pid: Pid, timeout: float | None = None) -> ControllerFuture[ProcessRecord]:
        """Future of the whole record of ``pid`` (a JSON-safe dict), from the fleet."""
        return self._communicator.submit(self._core.get_process, pid, timeout)

    def get_outputs(self, pid: Pid, timeout: float | None = None) -> ControllerFuture[dict[str, object] | None]:
        """Future of the outputs of ``pid`` (None while it runs; fails if it excepted or was killed)."""
        return self._communicator.submit(self._core.get_outputs, pid, timeout)

    def list_workers(self, within: float = 1.0) -> ControllerFuture[list[WorkerInfo]]:
        """Future of the workers that answer within ``within`` seconds (host, pid, queues, slots, uptime, health)."""
        return self._communicator.submit(self._core.list_workers, within)

    def list_processes(
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
    ) -> ControllerFuture[ProcessListing]:
        """Future of the summaries of the fleet's processes, newest first unless ``sort``/``reverse`` say
        otherwise, live and ended (``source`` says whether the store answered them)."""
        return self._communicator.submit(
            lambda: self._core.list_processes(
                state, limit, since, class_name, timeout, states=states, label=label, sort=sort, reverse=reverse
            )
        )

    def list_processes_page(
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
    ) -> ControllerFuture[ProcessPage]:
        """Future of one page of the listing: ``{"processes": [...], "more": cursor of the next page or None}``."""
        return self._communicator.submit(
            lambda: self._core.list_processes_page(
                state, limit, since, class_name, cursor, timeout, states=states, label=label, sort=sort, reverse=reverse
            )
        )
