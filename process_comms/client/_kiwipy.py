"""Our controllers over any kiwipy ``Communicator``: an adapter that looks like our :class:`AsyncCommunicator`.

kiwipy's thread communicators (``kiwipy.rmq.RmqThreadCommunicator``, ``plumpy.LoopCommunicator`` over one,
aiida-core's ZeroMQ communicator) block the caller until the broker has the message and return
``concurrent.futures.Future``\\ s nested once per ``pending`` reply; kiwipy's asyncio ``RmqCommunicator``
has coroutine methods returning asyncio futures of its own loop. The adapter keeps our promises over both:

- flat results: every level of nesting is awaited (as ``plumpy.futures.unwrap_kiwi_future`` does);
- non-blocking submission: a blocking kiwipy call runs on one sender thread (in call order), never on the
  caller's thread or loop; an asyncio communicator's calls run on its own loop;
- typed errors: kiwipy's exceptions become ours (``UnroutableError`` -> :class:`ProcessUnreachable`, ...);
- deadlines: the controller bounds every call, as over our own communicator.

Promises that only our own communicator can keep (close() publishing what was handed over, ``consuming``,
a ``cancelled`` reply type, typed remote errors beyond the message text) are listed in docs/migrating.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, cast, runtime_checkable

import kiwipy

from .._compat import cancelling, counts_cancellations
from ..errors import (
    BrokerUnavailable,
    CommunicatorClosed,
    ConnectionLost,
    DuplicateSubscriber,
    ProcessCommsError,
    ProcessUnreachable,
    RemoteError,
    TaskRejected,
)
from ..errors import TimeoutError as PCTimeoutError
from ..transports.base import AsyncCommunicator
from ..transports.kiwipy_async import KiwipyAsyncCommunicator
from ..transports.loop import AsyncFn, ControllerFuture, LoopThread
from ..wire.types import DEFAULT_QUEUE, queue_name

__all__ = ["KiwipyAdapter", "KiwipyPortal", "is_foreign", "unwrap_ours"]

T = TypeVar("T")


@runtime_checkable
class _Submits(Protocol):
    """Ours: a thread communicator (or a portal) that runs coroutine functions on its loop."""

    def submit(self, fn: AsyncFn[T], *args: object) -> ControllerFuture[T]: ...


@runtime_checkable
class _Sends(Protocol):
    """A kiwipy communicator's RPC send (a coroutine function on kiwipy's asyncio one)."""

    def rpc_send(self, recipient_id: object, msg: object) -> object: ...


@runtime_checkable
class _HasLoop(Protocol):
    """kiwipy's asyncio communicator: its event loop (``RmqCommunicator.loop()``, a method there)."""

    loop: object


@runtime_checkable
class _HasTaskQueue(Protocol):
    """A kiwipy communicator that names task queues (``task_queue(name)``)."""

    def task_queue(self, queue_name: str) -> object: ...


@runtime_checkable
class _Disconnects(Protocol):
    """kiwipy's asyncio communicator: ``disconnect()`` closes it."""

    async def disconnect(self) -> None: ...


class _Closes(Protocol):
    """A kiwipy thread communicator's lifecycle."""

    def is_closed(self) -> bool: ...

    def close(self) -> None: ...


def is_foreign(comm: object) -> bool:
    """True for a communicator that is not ours (no async core, no ``submit``): it needs the adapter."""
    return not isinstance(comm, (AsyncCommunicator, _Submits))


def unwrap_ours(comm: object) -> object:
    """Our communicator inside a ``plumpy.LoopCommunicator`` (plumpy's wiring), else ``comm`` itself.

    ``LoopCommunicator`` passes sends straight through (``src/plumpy/communications.py``), so the
    controller may use ours directly and keep every promise of it.
    """
    if isinstance(comm, KiwipyAsyncCommunicator):  # kiwipy's asyncio shapes over ours: ours keeps its promises
        return comm.core
    inner = getattr(comm, "_communicator", None)
    if type(comm).__name__ == "LoopCommunicator" and inner is not None and not is_foreign(inner):
        return inner
    return comm


def _loop_of(comm: object) -> asyncio.AbstractEventLoop | None:
    """The event loop an asyncio kiwipy communicator lives on (``RmqCommunicator.loop`` is a property)."""
    loop = comm.loop if isinstance(comm, _HasLoop) else None
    if callable(loop) and not isinstance(loop, asyncio.AbstractEventLoop):
        loop = loop()
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def _task_queue_name(comm: object) -> str | None:
    """The default task queue's name, for our records route (kiwipy keeps it as ``_task_queue``)."""
    for _ in range(4):  # LoopCommunicator -> RmqThreadCommunicator -> RmqCommunicator
        name = getattr(comm, "task_queue_name", None) or getattr(comm, "_task_queue", None)
        if isinstance(name, str):
            return name
        comm = getattr(comm, "_communicator", None)
        if comm is None:
            break
    return None


def typed_error(exc: BaseException, comm: object, *, remote: bool) -> BaseException:
    """The error of ours for what a kiwipy communicator raised; ``remote`` when a reply future failed."""
    if isinstance(exc, ProcessCommsError) or not isinstance(exc, Exception):
        return exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, kiwipy.DeliveryFailed):  # UnroutableError is one
        return ProcessUnreachable(f"not reachable: {text} (no subscriber holds this address)")
    if isinstance(exc, kiwipy.TaskRejected):
        return TaskRejected(text)
    if isinstance(exc, kiwipy.DuplicateSubscriberIdentifier):
        return DuplicateSubscriber(text)
    if isinstance(exc, kiwipy.CommunicatorClosed):
        return CommunicatorClosed(f"the communicator is closed: {text}")
    if isinstance(exc, (concurrent.futures.TimeoutError, TimeoutError)):
        return PCTimeoutError(f"the communicator did not answer in time: {text} (the action may still happen)")
    if isinstance(exc, kiwipy.RemoteException):
        message = str(exc.args[0]) if exc.args else text
        return RemoteError(message)
    if _closed(comm):
        return CommunicatorClosed(f"the communicator is closed ({type(exc).__name__}: {text})")
    if remote:  # e.g. aiida-core's ZeroMQ communicator fails reply futures with a bare Exception(text)
        return RemoteError(text, None if type(exc) is Exception else type(exc).__name__)
    if isinstance(exc, (ConnectionError, OSError)) or type(exc).__module__.startswith(("aio_pika", "aiormq", "pika")):
        return ConnectionLost(f"the communicator's connection failed: {type(exc).__name__}: {text}")
    return ProcessCommsError(f"the communicator failed: {type(exc).__name__}: {text}")


def _closed(comm: object) -> bool:
    try:
        return bool(cast(_Closes, comm).is_closed())
    except Exception:  # noqa: BLE001 - a communicator half torn down (kiwipy deletes its attributes)
        return True


async def _from_other_loop(fut: asyncio.Future[object]) -> object:
    """Await an asyncio future of another thread's loop: its callback is added on its own loop (plumpy's lost
    wake-up, pain point B1 in docs/migrating.md)."""
    bridge: concurrent.futures.Future[object] = concurrent.futures.Future()

    def copy(done: asyncio.Future[object]) -> None:
        if done.cancelled():
            bridge.cancel()
        elif done.exception() is not None:
            bridge.set_exception(done.exception())
        else:
            bridge.set_result(done.result())

    fut.get_loop().call_soon_threadsafe(fut.add_done_callback, copy)
    return await asyncio.wrap_future(bridge)


async def flatten(value: object) -> object:
    """Await ``value`` through every level of futures and awaitables to the final, plain value."""
    while True:
        if isinstance(value, concurrent.futures.Future):
            value = await asyncio.wrap_future(value)
        elif asyncio.isfuture(value):
            value = await (value if value.get_loop() is asyncio.get_running_loop() else _from_other_loop(value))
        elif inspect.isawaitable(value):
            value = await value
        else:
            return value


class KiwipyAdapter(AsyncCommunicator):
    """A kiwipy ``Communicator`` behind our :class:`AsyncCommunicator` interface, for our controllers.

    Its coroutines run on the caller's loop; the communicator's own calls run on one sender thread (a
    blocking thread communicator) or on the communicator's loop (kiwipy's asyncio ``RmqCommunicator``).
    """

    def __init__(self, communicator: object) -> None:
        super().__init__()
        self.kiwi = communicator
        self.facade = communicator
        self._async = isinstance(communicator, _Sends) and inspect.iscoroutinefunction(communicator.rpc_send)
        self._comm_loop = _loop_of(communicator) if self._async else None
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._task_queue = name = _task_queue_name(communicator)
        if name is not None:
            self.task_queue_name = name

    def __repr__(self) -> str:
        return f"<KiwipyAdapter {self.kiwi!r}>"

    def is_closed(self) -> bool:
        return self._closed or _closed(self.kiwi)

    @counts_cancellations  # cancelling() below, on Python 3.10 too
    async def _call(self, method: str, *args: object) -> object:
        """Call the communicator's ``method`` off the caller's thread and loop; its final value, typed errors."""
        self._ensure_open()
        fn: Callable[..., object] = getattr(self.kiwi, method)
        try:
            if self._async:
                return await self._on_comm_loop(lambda: self._local(cast(Awaitable[object], fn(*args))))
            if self._sender is None:
                self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="process-comms-kiwipy-send")
            sent = await asyncio.get_running_loop().run_in_executor(self._sender, functools.partial(fn, *args))
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            task = asyncio.current_task()
            if task is not None and cancelling(task):
                raise
            raise CommunicatorClosed("the communicator cancelled the call (was it closed?)") from None
        except _Remote as exc:
            raise typed_error(exc.__cause__ or exc, self.kiwi, remote=True) from None
        except Exception as exc:  # noqa: BLE001 - every failure of a foreign communicator becomes one of ours
            raise typed_error(exc, self.kiwi, remote=False) from None
        return await self._remote(sent)

    async def _local(self, sending: Awaitable[object]) -> object:
        """On the communicator's loop: await the send, then its reply futures (their failures are remote)."""
        sent = await sending
        try:
            return await flatten(sent)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            raise
        except Exception as exc:
            raise _Remote() from exc

    @counts_cancellations
    async def _remote(self, sent: object) -> object:
        try:
            return await flatten(sent)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            task = asyncio.current_task()
            if task is not None and cancelling(task):
                raise
            raise CommunicatorClosed("the reply future was cancelled (was the communicator closed?)") from None
        except Exception as exc:  # noqa: BLE001
            raise typed_error(exc, self.kiwi, remote=True) from None

    async def _on_comm_loop(self, make: AsyncFn[object]) -> object:
        loop = self._comm_loop
        if loop is None or loop is asyncio.get_running_loop():
            return await make()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_run(make), loop))

    # -- sending -----------------------------------------------------------------------------------
    async def rpc_send(
        self,
        recipient_id: object,
        msg: object,
        on_pending: Callable[[], None] | None = None,
        *,
        on_sent: Callable[[], None] | None = None,  # kiwipy's calls do not say when: never called
    ) -> object:
        return await self._call("rpc_send", recipient_id, msg)

    async def task_send(
        self,
        task: object,
        no_reply: bool = False,
        on_pending: Callable[[], None] | None = None,
        *,
        queue: str | None = None,
        on_sent: Callable[[], None] | None = None,  # kiwipy's calls do not say when: never called
    ) -> object:
        if queue is None or queue == DEFAULT_QUEUE:
            return await self._call("task_send", task, no_reply)
        base = self._task_queue
        if base is None or not isinstance(self.kiwi, _HasTaskQueue):
            raise TaskRejected(f"named task queue {queue!r}: this communicator has no task_queue(name)")
        named = await self._call("task_queue", queue_name(base, queue))  # our broker name (wire/types.py)
        return await KiwipyAdapter(named).task_send(task, no_reply)

    async def broadcast_send(
        self, body: object, sender: object = None, subject: object = None, correlation_id: object = None
    ) -> bool:
        result = await self._call("broadcast_send", body, sender, subject, correlation_id)
        return result is not False  # kiwipy's asyncio one returns the broker's Ack

    # -- subscribing (what the controller needs: broadcasts) ----------------------------------------
    async def add_broadcast_subscriber(self, subscriber: Callable[..., object], identifier: object = None) -> object:
        """Our subscriber is called on this (the caller's) loop, whichever thread kiwipy calls it from."""
        loop = asyncio.get_running_loop()

        def on_broadcast(*args: object, **kwargs: object) -> None:
            try:
                loop.call_soon_threadsafe(functools.partial(subscriber, *args, **kwargs))
            except RuntimeError:  # our loop has gone: nobody listens any more
                pass

        return await self._call("add_broadcast_subscriber", on_broadcast, identifier)

    async def remove_broadcast_subscriber(self, identifier: object) -> None:
        if self.is_closed():
            return
        try:
            await self._call("remove_broadcast_subscriber", identifier)
        except (ProcessCommsError, ValueError):  # ours: no error if unknown (kiwipy raises ValueError)
            pass

    async def add_rpc_subscriber(self, subscriber: object, identifier: object = None) -> str:
        return str(await self._call("add_rpc_subscriber", subscriber, identifier))

    async def remove_rpc_subscriber(self, identifier: object) -> None:
        await self._call("remove_rpc_subscriber", identifier)

    async def add_task_subscriber(
        self,
        subscriber: object,
        identifier: object = None,
        *,
        queue: str | None = None,
        prefetch_count: int | None = None,
    ) -> object:
        return await self._call("add_task_subscriber", subscriber, identifier)

    async def remove_task_subscriber(self, identifier: object, *, queue: str | None = None) -> None:
        await self._call("remove_task_subscriber", identifier)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the kiwipy communicator (``disconnect()`` for kiwipy's asyncio one) and the sender thread."""
        if self._closed:
            return
        await super().close()
        comm = self.kiwi
        try:
            if self._async:
                if isinstance(comm, _Disconnects):
                    await self._on_comm_loop(comm.disconnect)
            elif not _closed(comm):
                await asyncio.to_thread(cast(_Closes, comm).close)
        finally:
            if self._sender is not None:
                self._sender.shutdown(wait=False)


class _Remote(Exception):
    """Carries a reply future's failure out of the communicator's loop (its ``__cause__``)."""


async def _run(make: AsyncFn[object]) -> object:
    return await make()


class KiwipyPortal:
    """What the thread controller drives a foreign communicator through: an adapter on a loop thread of
    its own, with the ``submit``/``loop_thread``/``core``/``close`` our :class:`ThreadCommunicator` has."""

    def __init__(self, communicator: object) -> None:
        self.kiwi = communicator
        self.core = KiwipyAdapter(communicator)
        self._loop_thread: LoopThread | None = None
        self._started = threading.Lock()
        self._closed = False

    @property
    def loop_thread(self) -> LoopThread:
        """The loop thread the controller's coroutines run on, started on first use: a plumpy-shaped controller
        making only plumpy's calls sends straight through the communicator and never starts it, so one that
        is dropped unclosed (aiida-core drops its controllers with its ``Manager``) leaves no thread behind."""
        with self._started:
            if self._loop_thread is None:
                self._loop_thread = LoopThread("process-comms-kiwipy-loop")
            return self._loop_thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop of :attr:`loop_thread`."""
        return self.loop_thread.loop

    def submit(self, fn: AsyncFn[T], *args: object) -> ControllerFuture[T]:
        """Run ``await fn(*args)`` on the loop thread; a closed portal gives a failed future."""
        if self._closed:
            fut: ControllerFuture[T] = ControllerFuture()
            fut.set_exception(CommunicatorClosed("the controller is closed"))
            return fut
        return self.loop_thread.start_task_soon(fn, *args)

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the kiwipy communicator, then stop the loop thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        loop_thread = self.loop_thread  # the adapter's close is a coroutine: it runs there
        try:
            if loop_thread.running:
                loop_thread.run_sync(self.core.close)
        except (ProcessCommsError, BrokerUnavailable):
            pass
        finally:
            loop_thread.stop()
