"""The thread-safe communicator: an async core on its own loop thread, behind kiwipy's interface.

:func:`process_comms.connect` (:mod:`.connect`) makes one; kiwipy's blocking semantics are
:class:`~.connect.KiwipyThreadCommunicator`.

Sending never blocks the caller: ``rpc_send``, ``task_send`` and ``broadcast_send`` return futures at
once, each bounded by a deadline. Subscribing blocks briefly (the route exists when it returns), and
user subscriber callbacks run on a small thread pool, never on the I/O loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import os
import threading
import types
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import kiwipy

from .. import defaults
from ..errors import CommunicatorClosed
from ..wire.types import DEFAULT_QUEUE
from ._pulled import PulledTask
from ._thread_tasks import ThreadPulledTask, iterate_blocking, next_task_blocking
from .base import AsyncCommunicator, BrokerBacked, CallbackFuture
from .loop import AsyncFn, ControllerFuture, LoopThread, post, with_deadline

__all__ = ["ThreadCommunicator", "ThreadTaskQueue"]


@runtime_checkable
class _LoopSafe(Protocol):
    """A subscriber that promises to return at once (``loop_safe = True``), so it is called on the loop."""

    loop_safe: bool


T = TypeVar("T")

#: Communicators not closed yet: at interpreter exit each is closed, so what was handed over is published.
_OPEN: set[ThreadCommunicator] = set()
_OPEN_LOCK = threading.Lock()


@atexit.register
def _close_at_exit() -> None:
    """A script that ends without ``close()`` still delivers its fire-and-forget sends
    (tests/transports/test_close_hands_over.py)."""
    with _OPEN_LOCK:
        open_now = list(_OPEN)
    for comm in open_now:
        comm.close()


def _disown_in_forked_child() -> None:
    """In a child of ``os.fork()``: fail the communicators open at the fork at once, never wait on them.

    Only the forking thread lives on in the child (https://docs.python.org/3/library/os.html#os.fork), so
    their loop threads are gone and their broker connections are the parent's. Each is marked closed, its
    calls in flight fail with CommunicatorClosed, and interpreter exit in the child leaves it alone.
    """
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()  # a thread of the parent may have held it at the fork
    orphans = list(_OPEN)
    _OPEN.clear()
    reason = "this communicator belongs to the parent process: call connect() again after os.fork()"
    for comm in orphans:
        comm.disown(reason)


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_disown_in_forked_child)


class ThreadCommunicator(kiwipy.Communicator):
    """A kiwipy ``Communicator`` whose asyncio core runs on a background thread it owns."""

    def __init__(
        self,
        core_factory: Callable[[], AsyncCommunicator],
        *,
        name: str = "process-comms",
        rpc_timeout: float = defaults.RPC_TIMEOUT,
        task_timeout: float = defaults.TASK_TIMEOUT,
        callback_threads: int = 8,
        wait_connected: bool = True,
    ) -> None:
        self.rpc_timeout = rpc_timeout
        self.task_timeout = task_timeout
        self._name = name
        self._callback_threads = callback_threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._ordered_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._loop_thread = LoopThread(f"{name}-loop")

        async def create() -> AsyncCommunicator:
            core = core_factory()
            core.facade = self
            await core.connect()
            return core

        self._ready: ControllerFuture[AsyncCommunicator] = self._loop_thread.start_task_soon(create)
        self._core: AsyncCommunicator | None = None
        with _OPEN_LOCK:
            _OPEN.add(self)
        if wait_connected:
            try:
                self._core = self._ready.result(defaults.CONNECT_TIMEOUT + 5)
            except BaseException:
                self.close()
                raise

    # -- plumbing --------------------------------------------------------------------------------
    def disown(self, reason: str) -> None:
        """In a child of ``os.fork()``: mark closed and fail the calls in flight with ``reason``, never
        touching the parent's loop thread or connection (see ``_disown_in_forked_child``)."""
        self._lock = threading.Lock()  # a thread of the parent may have held it at the fork
        self._closed = True
        self._loop_thread.disown(reason)

    async def wait_connected(self) -> AsyncCommunicator:
        """Await the connection from any event loop (no thread blocks); the core communicator."""
        if self._core is None:
            self._core = await asyncio.wrap_future(self._ready)
        return self._core

    @property
    def core(self) -> AsyncCommunicator:
        """The async core communicator (use only from :attr:`loop`)."""
        if self._core is None:
            self._core = self._ready.result(defaults.CONNECT_TIMEOUT + 5)
        return self._core

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the core runs on (on a background thread)."""
        return self._loop_thread.loop

    @property
    def loop_thread(self) -> LoopThread:
        """The background loop thread."""
        return self._loop_thread

    def __repr__(self) -> str:
        return f"<ThreadCommunicator {self._core!r} closed={self._closed}>"

    def submit(self, fn: AsyncFn[T], *args: object) -> ControllerFuture[T]:
        """Run ``await fn(*args)`` on the loop thread; the returned future resolves with its outcome.

        Pass a coroutine function and its arguments (or a closure: ``submit(lambda: core.call(x, key=y))``),
        not a coroutine object: the coroutine is made on the loop thread, so a closed communicator has
        nothing to clean up. A closed communicator gives a future failed with :class:`CommunicatorClosed`.
        """
        if self._closed:
            fut: ControllerFuture[T] = ControllerFuture()
            fut.set_exception(CommunicatorClosed("the communicator is closed"))
            return fut
        return self._loop_thread.start_task_soon(fn, *args)

    def _blocking(self, fn: AsyncFn[T], *args: object) -> T:
        self._ensure_open()
        return self._loop_thread.run_sync(fn, *args, timeout=defaults.CONNECT_TIMEOUT + 5)

    async def _on_core(self, fn: Callable[[AsyncCommunicator], Awaitable[T]]) -> T:
        """On the loop: await the connected core (it may still be connecting), then ``await fn(core)``."""
        core = self._core
        if core is None:
            core = self._core = await asyncio.wrap_future(self._ready)
        return await fn(core)

    def _ensure_open(self) -> None:
        if self._closed:
            raise CommunicatorClosed("the communicator is closed")

    #: Whether the future of a subscriber's call on a callback thread is a reply level of its own (a ``pending``
    #: reply before the result): ours, True; kiwipy's mode, False (``CallbackFuture`` in transports/base.py).
    _call_is_level = True

    def _threaded(self, subscriber: Callable[..., object], ordered: bool = False) -> Callable[..., object]:
        """Wrap a user callback so that it runs on a callback thread, never on the I/O loop.

        Broadcast callbacks (``ordered``) share one thread, so they see broadcasts in arrival order; RPC
        and task callbacks share a small pool. Subscribers marked ``loop_safe = True`` (such as
        :class:`ProcessLauncher`) promise to return at once and are called on the loop directly.
        """
        if isinstance(subscriber, _LoopSafe) and subscriber.loop_safe:
            return subscriber
        plumpy_loop = _plumpy_loop(subscriber)
        if plumpy_loop is not None:
            return self._on_plumpy_loop(subscriber, plumpy_loop)
        with self._lock:
            if ordered:
                if self._ordered_executor is None:
                    self._ordered_executor = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix=f"{self._name}-broadcast"
                    )
                executor = self._ordered_executor
            else:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        self._callback_threads, thread_name_prefix=f"{self._name}-callback"
                    )
                executor = self._executor

        @functools.wraps(subscriber)
        def run_in_pool(_comm: object, *args: object) -> concurrent.futures.Future[object]:
            if self._call_is_level:
                return executor.submit(subscriber, self, *args)
            outcome = CallbackFuture()
            executor.submit(_settle_call, outcome, subscriber, self, *args)
            return outcome

        return run_in_pool

    def _on_plumpy_loop(
        self, subscriber: Callable[..., object], loop: asyncio.AbstractEventLoop
    ) -> Callable[..., object]:
        """Call a ``plumpy.LoopCommunicator`` subscriber on its own loop's thread, not on a callback thread.

        plumpy's ``convert_to_comm`` (``src/plumpy/communications.py``) adds a done callback to an asyncio
        future of that loop from the calling thread; when the future is already done, asyncio queues the
        callback with the non-thread-safe ``call_soon``, the idle loop never wakes, and the reply waits for
        the next unrelated wake-up (a launch stalled until then). Called on its
        own loop, the callback is added before the future can finish, so every step runs on that loop.
        """

        @functools.wraps(subscriber)
        def on_its_loop(_comm: object, *args: object) -> concurrent.futures.Future[object]:
            outcome = concurrent.futures.Future[object]() if self._call_is_level else CallbackFuture()
            if not post(loop, _settle_call, outcome, subscriber, self, *args):
                raise CommunicatorClosed("the subscriber's event loop is closed")
            return outcome

        on_its_loop.loop_safe = True  # type: ignore[attr-defined]
        return on_its_loop

    # -- lifecycle -------------------------------------------------------------------------------
    def is_closed(self) -> bool:
        return self._closed

    @property
    def consuming(self) -> bool:
        """True while this communicator's task subscribers receive tasks (False after the broker cancelled
        the consumer, until it consumes again; False when closed)."""
        core = self._core
        return core is not None and not self._closed and core.consuming

    def close(self) -> None:
        """Close the core, fail calls in flight with CommunicatorClosed and stop the loop thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if not self._loop_thread.in_loop_thread() and self._loop_thread.running:
            core = self._core
            ready = self._ready
            if core is None and ready.done() and not ready.cancelled() and ready.exception() is None:
                core = ready.result()
            if core is not None:
                try:
                    # the core first lets its calls to its own subscribers be answered, then publishes what was
                    # handed over (each bounded by CLOSE_FLUSH_TIMEOUT)
                    self._loop_thread.run_sync(
                        core.close, timeout=2 * defaults.CLOSE_FLUSH_TIMEOUT + defaults.CLOSE_TIMEOUT
                    )
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self._loop_thread.stop()
        for executor in (self._executor, self._ordered_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ThreadCommunicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- kiwipy Communicator interface -------------------------------------------------------------
    def add_rpc_subscriber(self, subscriber: Callable[..., object], identifier: Hashable | None = None) -> Hashable:
        return self._blocking(self.core.add_rpc_subscriber, self._threaded(subscriber), identifier)

    def remove_rpc_subscriber(self, identifier: Hashable) -> None:
        self._blocking(self.core.remove_rpc_subscriber, identifier)

    def add_task_subscriber(
        self,
        subscriber: Callable[..., object],
        identifier: Hashable | None = None,
        *,
        queue: str | None = None,
        prefetch_count: int | None = None,
    ) -> Hashable:
        """Receive tasks (from the named task ``queue``, with at most ``prefetch_count`` in progress)."""
        wrapped = self._threaded(subscriber)
        return self._blocking(
            lambda: self.core.add_task_subscriber(wrapped, identifier, queue=queue, prefetch_count=prefetch_count)
        )

    def remove_task_subscriber(self, identifier: Hashable, *, queue: str | None = None) -> None:
        self._blocking(lambda: self.core.remove_task_subscriber(identifier, queue=queue))

    def add_broadcast_subscriber(
        self, subscriber: Callable[..., object], identifier: Hashable | None = None
    ) -> Hashable:
        return self._blocking(self.core.add_broadcast_subscriber, self._threaded(subscriber, ordered=True), identifier)

    def remove_broadcast_subscriber(self, identifier: Hashable) -> None:
        self._blocking(self.core.remove_broadcast_subscriber, identifier)

    # -- kiwipy's RmqThreadCommunicator extras (kiwipy/rmq/threadcomms.py) ------------------------
    @property
    def server_properties(self) -> dict[str, object]:
        """The broker's connection properties (product, version, ...); empty on the embedded back end."""
        core = self.core
        return dict(core.server_properties) if isinstance(core, BrokerBacked) else {}

    def add_close_callback(self, callback: Callable[..., object], weak: bool = False) -> None:
        """Call ``callback(connection, exc)`` (on the loop thread) each time the broker connection closes."""
        self._ensure_open()
        core = self.core
        if not isinstance(core, BrokerBacked):
            raise TypeError("the embedded back end has no broker connection to watch")
        self._loop_thread.run_sync(_call_async, core.add_close_callback, callback, weak)

    def disconnect(self) -> None:
        """kiwipy's name for :meth:`close`."""
        self.close()

    def task_queue(self, name: str, prefetch_count: int | None = None) -> ThreadTaskQueue:
        """kiwipy's ``task_queue(name, prefetch_count=...)``: our named task queue ``name`` (broker name
        ``<task_queue>.<name>``; the default task queue's own name is that queue), with kiwipy's verbs and
        iteration; see :class:`ThreadTaskQueue`."""
        self._ensure_open()
        core = self.core
        if isinstance(core, BrokerBacked) and name == core.task_queue_name:  # AiiDA names its launch queue
            name = DEFAULT_QUEUE
        return ThreadTaskQueue(self, name, prefetch_count)

    def _send(self, make: Callable[[AsyncCommunicator], Awaitable[T]]) -> ControllerFuture[T]:
        """Start ``make(core)`` on the loop: the send's coroutine is made there, with the connected core."""
        return self.submit(self._on_core, make)

    def rpc_send(self, recipient_id: object, msg: object, timeout: float | None = None) -> ControllerFuture[object]:
        """Send an RPC; the future resolves to the final reply (flat) or fails with a typed error."""
        deadline = self.rpc_timeout if timeout is None else timeout
        return self._send(
            lambda core: with_deadline(core.rpc_send(recipient_id, msg), deadline, f"RPC to {recipient_id}")
        )

    def task_send(
        self, task: object, no_reply: bool = False, timeout: float | None = None, *, queue: str | None = None
    ) -> ControllerFuture[object]:
        """Queue a task (on the named task ``queue``); the future resolves to its result (or None once
        queued, with ``no_reply``)."""
        deadline = self.task_timeout if timeout is None else timeout
        return self._send(lambda core: with_deadline(core.task_send(task, no_reply, queue=queue), deadline, "task"))

    def broadcast_send(
        self, body: object, sender: object = None, subject: object = None, correlation_id: object = None
    ) -> ControllerFuture[bool]:
        """Broadcast without blocking; the future resolves to True once the broker has it."""
        return self._send(
            lambda core: with_deadline(
                core.broadcast_send(body, sender, subject, correlation_id), self.rpc_timeout, "broadcast"
            )
        )


def _settle_call(outcome: concurrent.futures.Future[object], subscriber: Callable[..., object], *args: object) -> None:
    """Call ``subscriber(*args)`` (on a callback thread or its own loop) and settle ``outcome`` with what it did."""
    if not outcome.set_running_or_notify_cancel():
        return
    try:
        outcome.set_result(subscriber(*args))
    except BaseException as exc:  # noqa: BLE001 - the subscriber's failure is its reply
        outcome.set_exception(exc)


async def _call_async(fn: Callable[..., T], *args: object) -> T:
    return fn(*args)


class ThreadTaskQueue:
    """kiwipy's ``RmqThreadTaskQueue`` verbs over one named task queue of a :class:`ThreadCommunicator`."""

    def __init__(self, comm: ThreadCommunicator, name: str, prefetch_count: int | None = None) -> None:
        self.comm, self.name, self.prefetch_count = comm, name, prefetch_count

    def task_send(self, task: object, no_reply: bool = False, timeout: float | None = None) -> Any:
        """Queue ``task`` on this queue (the communicator's send semantics)."""
        return self.comm.task_send(task, no_reply, timeout, queue=self.name)

    def add_task_subscriber(self, subscriber: Callable[..., object], identifier: Hashable | None = None) -> Hashable:
        """Receive this queue's tasks (at most ``prefetch_count`` in progress here); returns the identifier."""
        return self.comm.add_task_subscriber(
            subscriber, identifier, queue=self.name, prefetch_count=self.prefetch_count
        )

    def remove_task_subscriber(self, identifier: Hashable) -> None:
        """Stop receiving this queue's tasks through ``identifier`` (ValueError if unknown, as kiwipy)."""
        self.comm.remove_task_subscriber(identifier, queue=self.name)

    async def _pull(self, timeout: float) -> PulledTask | None:
        return await self.comm.core.pull_task(timeout, queue=self.name)

    def __iter__(self) -> Iterator[ThreadPulledTask]:
        """``for task in queue``: every task queued now (kiwipy's), those left pending requeued at the end."""
        if self.comm.is_closed():
            raise CommunicatorClosed("the communicator is closed")
        return iterate_blocking(self.comm.loop_thread, self._pull, defaults.TASK_FETCH_TIMEOUT)

    def next_task(
        self, timeout: float = defaults.TASK_FETCH_TIMEOUT, fail: bool = True
    ) -> contextlib.AbstractContextManager[ThreadPulledTask | None]:
        """``with queue.next_task() as task``: the next queued task, requeued at the end unless taken on;
        :class:`~process_comms.QueueEmpty` if there is none (None with ``fail=False``)."""
        if self.comm.is_closed():
            raise CommunicatorClosed("the communicator is closed")
        return next_task_blocking(self.comm.loop_thread, self._pull, timeout, fail)


def _plumpy_loop(subscriber: object) -> asyncio.AbstractEventLoop | None:
    """The event loop of a subscriber made by plumpy's ``convert_to_comm``, else None."""
    if not isinstance(subscriber, types.FunctionType) or subscriber.__module__ != "plumpy.communications":
        return None
    for name, cell in zip(subscriber.__code__.co_freevars, subscriber.__closure__ or (), strict=False):
        if name == "loop" and isinstance(cell.cell_contents, asyncio.AbstractEventLoop):
            return cell.cell_contents
    return None
