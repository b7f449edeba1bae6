"""The plumpy-shaped mode of the controllers (``api="plumpy"``), for code written against plumpy's controllers.

plumpy's controllers (``src/plumpy/process_comms.py``, plumpy 0.26) add nothing to a kiwipy communicator: the
thread controller returns what ``rpc_send``/``task_send`` return, a ``concurrent.futures.Future`` nested once
per ``pending`` reply, with ``UnroutableError`` raised by the call itself (kiwipy blocks until the broker has
confirmed the publish) and no deadline; the asyncio controller awaits a fixed number of those levels. Code
written against it relies on all three: aiida-core's ``Process.kill`` catches ``UnroutableError`` from
``kill_process(child)`` and ``revive_processes`` calls ``.done()`` on the first level
(``src/aiida/engine/processes/process.py``, ``src/aiida/engine/processes/control.py``).

This mode keeps those shapes by sending through a kiwipy-shaped communicator: kiwipy's own, plumpy's
``LoopCommunicator`` over one, or ours from ``connect(url, api="kiwipy")`` (whose send semantics are
:class:`~process_comms.transports.connect.KiwipyThreadCommunicator`'s). A deadline applies only when the
caller asks for one (the controller's ``rpc_timeout``/``task_timeout`` or a call's ``timeout``): it fails the
level still pending with :class:`process_comms.TimeoutError`. docs/migrating.md has the table of modes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol, cast, runtime_checkable

import kiwipy

from ..errors import TimeoutError as PCTimeoutError
from ..transports.base import AsyncCommunicator
from ..transports.connect import KiwipyThreadCommunicator
from ..transports.loop import with_deadline
from ..transports.threaded import ThreadCommunicator
from ..wire.messages import MessageType, ObjectLoader, Pid, create_continue_body, create_create_body
from ._kiwipy import unwrap_ours

__all__ = ["ControllerApi", "PlumpyShape", "bounded", "check_api", "kiwipy_shaped"]

#: The shape of the controllers' answers: ours (flat, bounded) or plumpy's (nested per ``pending``, no deadline).
ControllerApi = Literal["process_comms", "plumpy"]

#: How a plumpy-shaped call schedules its deadline: ``schedule(seconds, callback)`` from any thread.
Schedule = Callable[[float, Callable[[], None]], None]

Future = concurrent.futures.Future


def check_api(api: object) -> bool:
    """True for the plumpy-shaped mode; ValueError for an unknown ``api``."""
    if api not in ("process_comms", "plumpy"):
        raise ValueError(f"api must be 'process_comms' or 'plumpy', not {api!r}")
    return api == "plumpy"


class KiwipyShaped(Protocol):
    """A kiwipy-shaped thread communicator's sends (kiwipy's ``Communicator``): each returns a future, nested
    once per ``pending`` reply, or raises."""

    def rpc_send(self, recipient_id: Pid, msg: object) -> object: ...

    def task_send(self, task: object, no_reply: bool = False) -> object: ...

    def broadcast_send(self, body: object, sender: object = None, subject: object = None) -> object: ...


@runtime_checkable
class _Sends(Protocol):
    def rpc_send(self, recipient_id: Pid, msg: object) -> object: ...


def kiwipy_shaped(communicator: object) -> KiwipyShaped:
    """The communicator to send through in the plumpy-shaped mode, or TypeError if it cannot give plumpy's shapes.

    Ours gives them only from ``connect(url, api="kiwipy")``: the default one answers flat futures.
    """
    inner = unwrap_ours(communicator)  # a plumpy LoopCommunicator passes sends straight to ours
    if isinstance(inner, AsyncCommunicator) or (
        isinstance(inner, ThreadCommunicator) and not isinstance(inner, KiwipyThreadCommunicator)
    ):
        raise TypeError(
            "api='plumpy' needs a kiwipy-shaped communicator: process_comms.connect(url, api='kiwipy'), kiwipy's "
            f"RmqThreadCommunicator or plumpy's LoopCommunicator over one; got {type(inner).__name__}"
        )
    if isinstance(inner, _Sends) and inspect.iscoroutinefunction(inner.rpc_send):
        raise TypeError("api='plumpy' needs a thread communicator: kiwipy's asyncio one has no plumpy shape")
    return cast(KiwipyShaped, communicator)


def bounded(fut: Future[object], deadline: float, what: str, schedule: Schedule) -> Future[object]:
    """A future nested as ``fut`` is, level by level, whose pending level fails after ``deadline`` seconds.

    Exactly one of "the level settles" and "the deadline passes" settles each level of the copy: whichever
    takes the level from ``current`` under the lock.
    """
    outer: Future[object] = Future()
    lock = threading.Lock()
    current: list[Future[object] | None] = [outer]

    def expire() -> None:
        with lock:
            level, current[0] = current[0], None
        if level is not None:
            late = PCTimeoutError(f"{what}: no answer within {deadline:g} s (the action may still happen)")
            level.set_exception(late)

    def follow(source: Future[object], copy: Future[object]) -> None:
        def settle(done: Future[object]) -> None:
            deeper: Future[object] | None = None
            with lock:
                if current[0] is not copy:
                    return  # the deadline took this level first
                if not done.cancelled() and done.exception() is None and isinstance(done.result(), Future):
                    deeper = Future()
                current[0] = deeper
            if done.cancelled():
                copy.cancel()
            elif done.exception() is not None:
                copy.set_exception(done.exception())
            elif deeper is not None:
                copy.set_result(deeper)
                follow(cast(Future[object], done.result()), deeper)  # a Future: checked under the lock
            else:
                copy.set_result(done.result())

        source.add_done_callback(settle)

    follow(fut, outer)
    schedule(deadline, expire)
    return outer


def _flat(fut: Future[object]) -> Future[object]:
    """A future of the final value of a nested one (``plumpy.futures.unwrap_kiwi_future``'s job)."""
    out: Future[object] = Future()

    def settle(done: Future[object]) -> None:
        if done.cancelled():
            out.cancel()
        elif done.exception() is not None:
            out.set_exception(done.exception())
        elif isinstance(nested := done.result(), Future):
            nested.add_done_callback(settle)
        else:
            out.set_result(done.result())

    fut.add_done_callback(settle)
    return out


def _done(value: object) -> Future[object]:
    """A future that already has ``value``."""
    fut: Future[object] = Future()
    fut.set_result(value)
    return fut


class PlumpyShape:
    """The plumpy-shaped calls of both controllers over one kiwipy-shaped communicator.

    ``rpc_timeout``/``task_timeout`` None: no deadline, as plumpy. The thread calls block while the
    communicator's send blocks (kiwipy: until the broker confirmed the publish) and raise what it raises.
    """

    def __init__(
        self,
        communicator: object,
        rpc_timeout: float | None,
        task_timeout: float | None,
        schedule: Schedule | None = None,
    ) -> None:
        self.comm = kiwipy_shaped(communicator)
        self._schedule = schedule
        self.rpc_timeout = rpc_timeout
        self.task_timeout = task_timeout

    def _bound(self, fut: object, deadline: float | None, what: str) -> object:
        if deadline is None or not isinstance(fut, Future):
            return fut
        assert self._schedule is not None, "the thread controller gives a schedule"
        return bounded(fut, deadline, what, self._schedule)

    # -- the thread controller's calls: plumpy's RemoteProcessThreadController ---------------------
    def rpc(self, pid: Pid, message: MessageType, timeout: float | None) -> object:
        deadline = self.rpc_timeout if timeout is None else timeout
        return self._bound(self.comm.rpc_send(pid, message), deadline, f"{message['intent']} of process {pid}")

    def task(self, body: MessageType, no_reply: bool, timeout: float | None) -> object:
        deadline = self.task_timeout if timeout is None else timeout
        return self._bound(self.comm.task_send(body, no_reply=no_reply), deadline, f"{body['task']} task")

    def broadcast(self, body: object, subject: str) -> None:
        self.comm.broadcast_send(body, subject=subject)

    def execute(
        self,
        process_class: object,
        init_args: Sequence[object] | None,
        init_kwargs: Mapping[str, object] | None,
        loader: ObjectLoader | None,
        nowait: bool,
        no_reply: bool,
        timeout: float | None,
    ) -> Future[object]:
        """Create, then continue (plumpy's ``execute_process``): a future of what ``continue_process`` gives.

        The continue is sent from a thread of its own: the create's answer arrives on the communicator's
        thread, where kiwipy's blocking send would wait for itself (plumpy's own deadlocks there).
        """
        create = create_create_body(process_class, init_args, init_kwargs, persist=True, loader=loader)
        sent = self.task(create, False, timeout)
        created = _flat(sent) if isinstance(sent, Future) else _done(sent)
        executed: Future[object] = Future()

        def send_continue(done: Future[object]) -> None:
            try:
                continued = self.task(create_continue_body(cast(Pid, done.result()), nowait=nowait), no_reply, timeout)
            except BaseException as exc:  # noqa: BLE001 - it belongs to the caller's future, as kiwipy.capture_exceptions
                executed.set_exception(exc)
                return
            if isinstance(continued, Future):
                kiwipy.chain(continued, executed)
            else:
                executed.set_result(continued)

        def on_created(done: Future[object]) -> None:
            threading.Thread(target=send_continue, args=(done,), name="process-comms-plumpy-execute").start()

        created.add_done_callback(on_created)
        return executed

    # -- the asyncio controller's calls: plumpy's RemoteProcessController ---------------------------
    async def levels(self, send: Callable[[], object], depth: int, deadline: float | None, what: str) -> object:
        """Await up to ``depth`` levels of what ``send()`` returns, as plumpy's asyncio controller does.

        ``send`` (a blocking kiwipy call) runs on a worker thread, not on the caller's loop; a level that is
        already a plain value ends the unwrapping (plumpy would fail on it with an AssertionError).
        """
        value = await asyncio.to_thread(send)

        async def unwrap() -> object:
            result = value
            for _ in range(depth):
                if not isinstance(result, Future):
                    break
                result = await asyncio.wrap_future(result)
            return result

        if deadline is None:
            return await unwrap()
        return await with_deadline(unwrap(), deadline, what)

    async def rpc_levels(self, pid: Pid, message: MessageType, depth: int, timeout: float | None) -> object:
        deadline = self.rpc_timeout if timeout is None else timeout
        what = f"{message['intent']} of process {pid}"
        return await self.levels(lambda: self.comm.rpc_send(pid, message), depth, deadline, what)

    async def task_levels(self, body: MessageType, no_reply: bool, timeout: float | None) -> object:
        deadline = self.task_timeout if timeout is None else timeout
        send = lambda: self.comm.task_send(body, no_reply=no_reply)  # noqa: E731 - a call for the worker thread
        return await self.levels(send, 1 if no_reply else 2, deadline, f"{body['task']} task")

    async def broadcast_async(self, body: object, subject: str) -> None:
        await asyncio.to_thread(self.comm.broadcast_send, body, subject=subject)

    async def execute_async(
        self,
        process_class: object,
        init_args: Sequence[object] | None,
        init_kwargs: Mapping[str, object] | None,
        loader: ObjectLoader | None,
        nowait: bool,
        no_reply: bool,
        timeout: float | None,
    ) -> object:
        create = create_create_body(process_class, init_args, init_kwargs, persist=True, loader=loader)
        pid = await self.task_levels(create, False, timeout)
        return await self.task_levels(create_continue_body(cast(Pid, pid), nowait=nowait), no_reply, timeout)
