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
from collections.abc import Callable
from typing import Any, TypeVar

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

__all__ = ["KiwipyAdapter", "KiwipyPortal", "is_foreign", "unwrap_ours"]

T = TypeVar("T")


def is_foreign(comm: Any) -> bool:
    """True for a communicator that is not ours (no async core, no ``submit``): it needs the adapter."""
    return not isinstance(comm, AsyncCommunicator) and not callable(getattr(comm, "submit", None))


def unwrap_ours(comm: Any) -> Any:
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


def _loop_of(comm: Any) -> asyncio.AbstractEventLoop | None:
    """The event loop an asyncio kiwipy communicator lives on (``RmqCommunicator.loop`` is a property)."""
    loop = getattr(comm, "loop", None)
    if callable(loop) and not isinstance(loop, asyncio.AbstractEventLoop):
        loop = loop()
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def _task_queue_name(comm: Any) -> str | None:
    """The default task queue's name, for our records route (kiwipy keeps it as ``_task_queue``)."""
    for _ in range(4):  # LoopCommunicator -> RmqThreadCommunicator -> RmqCommunicator
        name = getattr(comm, "task_queue_name", None) or getattr(comm, "_task_queue", None)
        if isinstance(name, str):
            return name
        comm = getattr(comm, "_communicator", None)
        if comm is None:
            break
    return None


def typed_error(exc: BaseException, comm: Any, *, remote: bool) -> BaseException:
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


def _closed(comm: Any) -> bool:
    try:
        return bool(comm.is_closed())
    except Exception:  # noqa: BLE001 - a communicator half torn down (kiwipy deletes its attributes)
        return True


async def _from_other_loop(fut: asyncio.Future[Any]) -> Any:
    """Await an asyncio future of another thread's loop: its callback is added on its own loop (pain point B1)."""
    bridge: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def copy(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            bridge.cancel()
        elif done.exception() is not None:
            bridge.set_exception(done.exception())
        else:
            bridge.set_result(done.result())

    fut.get_loop().call_soon_threadsafe(fut.add_done_callback, copy)
    return await asyncio.wrap_future(bridge)


async def flatten(value: Any) -> Any:
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

    def __init__(self, communicator: Any) -> None:
        super().__init__()
        self.kiwi = communicator
        self.facade = communicator
        self._async = inspect.iscoroutinefunction(getattr(type(communicator), "rpc_send", None))
        self._comm_loop = _loop_of(communicator) if self._async else None
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        name = _task_queue_name(communicator)
        if name is not None:
            self.task_queue_name = name

    def __repr__(self) -> str:
        return f"<KiwipyAdapter {self.kiwi!r}>"

    def is_closed(self) -> bool:
        return self._closed or _closed(self.kiwi)

    @counts_cancellations  # cancelling() below, on Python 3.10 too
    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the communicator's ``method`` off the caller's thread and loop; its final value, typed errors."""
        self._ensure_open()
        fn: Callable[..., Any] = getattr(self.kiwi, method)
        try:
            if self._async:
                return await self._on_comm_loop(lambda: self._local(fn(*args, **kwargs)))
            if self._sender is None:
                self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="process-comms-kiwipy-send")
            sent = await asyncio.get_running_loop().run_in_executor(
                self._sender, functools.partial(fn, *args, **kwargs)
            )
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

    async def _local(self, sending: Any) -> Any:
        """On the communicator's loop: await the send, then its reply futures (their failures are remote)."""
        sent = await sending
        try:
            return await flatten(sent)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            raise
        except Exception as exc:
            raise _Remote() from exc

    @counts_cancellations
    async def _remote(self, sent: Any) -> Any:
        try:
            return await flatten(sent)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            task = asyncio.current_task()
            if task is not None and cancelling(task):
                raise
            raise CommunicatorClosed("the reply future was cancelled (was the communicator closed?)") from None
        except Exception as exc:  # noqa: BLE001
            raise typed_error(exc, self.kiwi, remote=True) from None

    async def _on_comm_loop(self, make: AsyncFn[Any]) -> Any:
        loop = self._comm_loop
        if loop is None or loop is asyncio.get_running_loop():
            return await make()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_run(make), loop))

    # -- sending -----------------------------------------------------------------------------------
    async def rpc_send(
        self,
        recipient_id: Any,
        msg: Any,
        on_pending: Callable[[], None] | None = None,
        *,
        on_sent: Callable[[], None] | None = None,  # kiwipy's calls do not say when: never called
    ) -> Any:
        return await self._call("rpc_send", recipient_id, msg)

    async def task_send(
        self,
        task: Any,
        no_reply: bool = False,
        on_pending: Callable[[], None] | None = None,
        *,
        queue: str | None = None,
        on_sent: Callable[[], None] | None = None,  # kiwipy's calls do not say when: never called
    ) -> Any:
        if queue is None or queue == "default":
            return await self._call("task_send", task, no_reply)
        base = getattr(self, "task_queue_name", None)
        if base is None or not callable(getattr(self.kiwi, "task_queue", None)):
            raise TaskRejected(f"named task queue {queue!r}: this communicator has no task_queue(name)")
        named = await self._call("task_queue", f"{base}.{queue}")  # our broker name (rmq/_tasks.py queue_name)
        return await KiwipyAdapter(named).task_send(task, no_reply)

    async def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        result = await self._call("broadcast_send", body, sender, subject, correlation_id)
        return result is not False  # kiwipy's asyncio one returns the broker's Ack

    # -- subscribing (what the controller needs: broadcasts) ----------------------------------------
    async def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        """Our subscriber is called on this (the caller's) loop, whichever thread kiwipy calls it from."""
        loop = asyncio.get_running_loop()

        def on_broadcast(*args: Any, **kwargs: Any) -> None:
            try:
                loop.call_soon_threadsafe(functools.partial(subscriber, *args, **kwargs))
            except RuntimeError:  # our loop has gone: nobody listens any more
                pass

        return await self._call("add_broadcast_subscriber", on_broadcast, identifier)

    async def remove_broadcast_subscriber(self, identifier: Any) -> None:
        if self.is_closed():
            return
        try:
            await self._call("remove_broadcast_subscriber", identifier)
        except (ProcessCommsError, ValueError):  # ours: no error if unknown (kiwipy raises ValueError)
            pass

    async def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> str:
        return str(await self._call("add_rpc_subscriber", subscriber, identifier))

    async def remove_rpc_subscriber(self, identifier: Any) -> None:
        await self._call("remove_rpc_subscriber", identifier)

    async def add_task_subscriber(
        self, subscriber: Any, identifier: Any = None, *, queue: str | None = None, prefetch_count: int | None = None
    ) -> Any:
        return await self._call("add_task_subscriber", subscriber, identifier)

    async def remove_task_subscriber(self, identifier: Any, *, queue: str | None = None) -> None:
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
                disconnect = getattr(comm, "disconnect", None)
                if disconnect is not None:
                    await self._on_comm_loop(disconnect)
            elif not _closed(comm):
                await asyncio.to_thread(comm.close)
        finally:
            if self._sender is not None:
                self._sender.shutdown(wait=False)


class _Remote(Exception):
    """Carries a reply future's failure out of the communicator's loop (its ``__cause__``)."""


async def _run(make: AsyncFn[Any]) -> Any:
    return await make()


class KiwipyPortal:
    """What the thread controller drives a foreign communicator through: an adapter on a loop thread of
    its own, with the ``submit``/``loop_thread``/``core``/``close`` our :class:`ThreadCommunicator` has."""

    def __init__(self, communicator: Any) -> None:
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

    def submit(self, fn: AsyncFn[T], *args: Any) -> ControllerFuture[T]:
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
