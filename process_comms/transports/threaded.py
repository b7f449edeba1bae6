"""The thread-safe communicator: an async core on its own loop thread, behind kiwipy's interface.

Sending never blocks the caller: ``rpc_send``, ``task_send`` and ``broadcast_send`` return futures at
once, each bounded by a deadline. Subscribing blocks briefly (the route exists when it returns), and
user subscriber callbacks run on a small thread pool, never on the I/O loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import kiwipy

from .. import defaults
from ..errors import CommunicatorClosed
from ..urls import mask_url, split_urls
from ..wire.codec import Codec
from ._loop import AsyncFn, ControllerFuture, LoopThread, with_deadline
from .base import AsyncCommunicator
from .embedded import EmbeddedCommunicator
from .rmq import RmqCommunicator

__all__ = ["ThreadCommunicator", "connect", "connect_async"]

T = TypeVar("T")

#: Communicators not closed yet: at interpreter exit each is closed, so what was handed over is published.
_OPEN: set[ThreadCommunicator] = set()
_OPEN_LOCK = threading.Lock()


@atexit.register
def _close_at_exit() -> None:
    """A script that ends without ``close()`` still delivers its fire-and-forget sends (issue 13)."""
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
        comm._lock = threading.Lock()
        comm._closed = True
        comm._loop_thread._stopping = True
        for fut in list(comm._loop_thread._futures):
            if not fut.done():
                fut._condition = threading.Condition()  # as for the lock above
                fut.set_exception(CommunicatorClosed(reason))


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

    def submit(self, fn: AsyncFn[T], *args: Any) -> ControllerFuture[T]:
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

    def _blocking(self, fn: AsyncFn[T], *args: Any) -> T:
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

    def _threaded(self, subscriber: Callable[..., Any], ordered: bool = False) -> Callable[..., Any]:
        """Wrap a user callback so that it runs on a callback thread, never on the I/O loop.

        Broadcast callbacks (``ordered``) share one thread, so they see broadcasts in arrival order; RPC
        and task callbacks share a small pool. Subscribers marked ``loop_safe = True`` (such as
        :class:`ProcessLauncher`) promise to return at once and are called on the loop directly.
        """
        if getattr(subscriber, "loop_safe", False):
            return subscriber
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
        def run_in_pool(_comm: Any, *args: Any) -> Any:
            return executor.submit(subscriber, self, *args)

        return run_in_pool

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
                    # the core first publishes what was handed over (bounded by CLOSE_FLUSH_TIMEOUT)
                    self._loop_thread.run_sync(
                        core.close, timeout=defaults.CLOSE_FLUSH_TIMEOUT + defaults.CLOSE_TIMEOUT
                    )
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self._loop_thread.stop()
        for executor in (self._executor, self._ordered_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ThreadCommunicator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- kiwipy Communicator interface -------------------------------------------------------------
    def add_rpc_subscriber(self, subscriber: Callable[..., Any], identifier: Any = None) -> Any:
        return self._blocking(self.core.add_rpc_subscriber, self._threaded(subscriber), identifier)

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        self._blocking(self.core.remove_rpc_subscriber, identifier)

    def add_task_subscriber(
        self,
        subscriber: Callable[..., Any],
        identifier: Any = None,
        *,
        queue: str | None = None,
        prefetch_count: int | None = None,
    ) -> Any:
        """Receive tasks (from the named task ``queue``, with at most ``prefetch_count`` in progress)."""
        wrapped = self._threaded(subscriber)
        return self._blocking(
            lambda: self.core.add_task_subscriber(wrapped, identifier, queue=queue, prefetch_count=prefetch_count)
        )

    def remove_task_subscriber(self, identifier: Any, *, queue: str | None = None) -> None:
        self._blocking(lambda: self.core.remove_task_subscriber(identifier, queue=queue))

    def add_broadcast_subscriber(self, subscriber: Callable[..., Any], identifier: Any = None) -> Any:
        return self._blocking(self.core.add_broadcast_subscriber, self._threaded(subscriber, ordered=True), identifier)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        self._blocking(self.core.remove_broadcast_subscriber, identifier)

    def _send(self, make: Callable[[AsyncCommunicator], Awaitable[T]]) -> ControllerFuture[T]:
        """Start ``make(core)`` on the loop: the send's coroutine is made there, with the connected core."""
        return self.submit(self._on_core, make)

    def rpc_send(self, recipient_id: Any, msg: Any, timeout: float | None = None) -> ControllerFuture[Any]:
        """Send an RPC; the future resolves to the final reply (flat) or fails with a typed error."""
        deadline = self.rpc_timeout if timeout is None else timeout
        return self._send(
            lambda core: with_deadline(core.rpc_send(recipient_id, msg), deadline, f"RPC to {recipient_id}")
        )

    def task_send(
        self, task: Any, no_reply: bool = False, timeout: float | None = None, *, queue: str | None = None
    ) -> ControllerFuture[Any]:
        """Queue a task (on the named task ``queue``); the future resolves to its result (or None once
        queued, with ``no_reply``)."""
        deadline = self.task_timeout if timeout is None else timeout
        return self._send(lambda core: with_deadline(core.task_send(task, no_reply, queue=queue), deadline, "task"))

    def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> ControllerFuture[bool]:
        """Broadcast without blocking; the future resolves to True once the broker has it."""
        return self._send(
            lambda core: with_deadline(
                core.broadcast_send(body, sender, subject, correlation_id), self.rpc_timeout, "broadcast"
            )
        )


def _core_factory(
    url: str | Sequence[str] | None, codec: str | Codec | None, options: dict[str, Any]
) -> Callable[[], AsyncCommunicator]:
    if url is None or url in ("", "embedded://", "memory://"):
        if options:
            raise TypeError(f"options {sorted(options)} only apply to a broker URL")
        return lambda: EmbeddedCommunicator(codec)
    urls = split_urls(url)
    for one in urls:
        if not one.startswith(("amqp://", "amqps://")):
            raise ValueError(
                f"unsupported URL {mask_url(one)!r}: use None for the embedded default, or amqp:// / amqps://"
            )
    return lambda: RmqCommunicator(urls, codec=codec, **options)


def connect(
    url: str | Sequence[str] | None = None,
    *,
    codec: str | Codec | None = None,
    rpc_timeout: float = defaults.RPC_TIMEOUT,
    task_timeout: float = defaults.TASK_TIMEOUT,
    **options: Any,
) -> ThreadCommunicator:
    """Connect and return a thread-safe communicator; ``url=None`` gives the embedded, broker-free default.

    ``url`` may name several brokers (a list, or one string with commas, e.g. the nodes of a cluster):
    the first that answers is used, and a lost connection moves on to the next in turn.

    ``options`` for RabbitMQ: ``message_exchange``, ``task_exchange``, ``task_queue``,
    ``task_prefetch_count``, ``heartbeat``, ``testing_mode``, ``connect_timeout``, ``ssl_options``.
    Raises :class:`BrokerUnavailable` if the broker cannot be reached or refuses the credentials.
    """
    factory = _core_factory(url, codec, options)
    return ThreadCommunicator(factory, rpc_timeout=rpc_timeout, task_timeout=task_timeout)


async def connect_async(
    url: str | Sequence[str] | None = None,
    *,
    codec: str | Codec | None = None,
    rpc_timeout: float = defaults.RPC_TIMEOUT,
    task_timeout: float = defaults.TASK_TIMEOUT,
    **options: Any,
) -> ThreadCommunicator:
    """Like :func:`connect`, but awaits the connection instead of blocking the caller's event loop."""
    factory = _core_factory(url, codec, options)
    comm = ThreadCommunicator(factory, rpc_timeout=rpc_timeout, task_timeout=task_timeout, wait_connected=False)
    try:
        comm._core = await asyncio.wrap_future(comm._ready)
    except BaseException:
        comm.close()
        raise
    return comm
