"""kiwipy's asyncio shapes over our asyncio :class:`RmqCommunicator`: ``await connect_kiwipy_async(...)``.

kiwipy's asyncio ``RmqCommunicator`` (``src/kiwipy/rmq/communicator.py``, ``tasks.py``, kiwipy 0.9) answers
``await rpc_send(...)`` and ``await task_send(...)`` with an ``asyncio.Future`` once the broker has confirmed the
request (``UnroutableError`` raised by the ``await`` itself when nothing takes it), nested one level per
``pending`` reply; ``await task_send(task, no_reply=True)`` is None and ``await broadcast_send(...)`` True. Our
``RmqCommunicator`` awaits the final, flat answer instead. :class:`KiwipyAsyncCommunicator` gives kiwipy's shapes
for code written against kiwipy's asyncio communicator, as ``connect(url, api="kiwipy")`` does for its thread
one (transports/connect.py). Every reply level still has our deadline (``rpc_timeout``/``task_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

from .. import defaults
from ..wire.codec import Codec
from ._kiwipy_keywords import translate
from ._pulled import PulledTask
from .loop import with_deadline
from .rmq import RmqCommunicator
from .rmq.communicator import NamedTaskQueue

__all__ = ["KiwipyAsyncCommunicator", "KiwipyAsyncTaskQueue", "connect_kiwipy_async"]

#: ``start(on_pending, on_sent)``: one of the core's sends with its progress callbacks.
Start = Callable[[Callable[[], None], Callable[[], None]], Awaitable[object]]


async def _nested(
    start: Start, deadline: float, what: str, running: set[asyncio.Future[object]]
) -> asyncio.Future[object]:
    """Start a send; once the broker confirmed it, kiwipy's future of the answer (one level per ``pending``).

    A failure before the broker had the request (``UnroutableError``, a closed communicator) is raised here.
    """
    loop = asyncio.get_running_loop()
    outer: asyncio.Future[object] = loop.create_future()
    level = [outer]
    sent: asyncio.Future[object] = loop.create_future()

    def on_pending() -> None:
        if level[0].done():  # the caller cancelled the level it held: nothing deeper to hand out
            return
        deeper: asyncio.Future[object] = loop.create_future()
        level[0].set_result(deeper)
        level[0] = deeper

    def on_sent() -> None:
        if not sent.done():
            sent.set_result(None)

    def settle(done: asyncio.Future[object]) -> None:
        running.discard(done)
        current = level[0]
        if current.done():
            return
        if done.cancelled():
            current.cancel()
        elif done.exception() is not None:
            current.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            current.set_result(done.result())

    call = asyncio.ensure_future(with_deadline(start(on_pending, on_sent), deadline, what))
    running.add(call)  # held until it settles: the caller may drop the future it got
    call.add_done_callback(settle)
    await asyncio.wait([sent, call], return_when=asyncio.FIRST_COMPLETED)  # the call is bounded by its deadline
    if not sent.done():
        sent.cancel()
        if not call.cancelled() and call.exception() is not None:
            outer.exception()  # the same error, raised below: not also "never retrieved" on the future
            raise call.exception()  # type: ignore[misc]
    return outer


class KiwipyAsyncTaskQueue:
    """kiwipy's ``RmqTaskQueue`` over one of our named task queues: ``task_send`` answers kiwipy's future."""

    def __init__(self, comm: KiwipyAsyncCommunicator, queue: NamedTaskQueue) -> None:
        self._comm, self._queue = comm, queue

    async def task_send(self, task: object, no_reply: bool = False) -> Any:
        """kiwipy's future of the task's result (nested per ``pending``); None once queued with ``no_reply``."""
        return await self._comm.task_send(task, no_reply, queue=self._queue.name)

    async def add_task_subscriber(
        self, subscriber: Callable[..., object], identifier: Hashable | None = None
    ) -> Hashable:
        return await self._queue.add_task_subscriber(subscriber, identifier)

    async def remove_task_subscriber(self, identifier: Hashable) -> None:
        await self._queue.remove_task_subscriber(identifier)

    def __aiter__(self) -> AsyncIterator[PulledTask]:
        return self._queue.__aiter__()

    def next_task(
        self, timeout: float = defaults.TASK_FETCH_TIMEOUT, fail: bool = True
    ) -> contextlib.AbstractAsyncContextManager[PulledTask | None]:
        return self._queue.next_task(timeout, fail)


class KiwipyAsyncCommunicator:
    """kiwipy's asyncio ``RmqCommunicator`` shapes over ours (``core``); subscribers are the core's.

    A subscriber is called with the core (our ``RmqCommunicator``, flat answers), not with this object.
    Our controllers given this object use the core (client/_kiwipy.py ``unwrap_ours``).
    """

    def __init__(
        self,
        core: RmqCommunicator,
        *,
        rpc_timeout: float = defaults.RPC_TIMEOUT,
        task_timeout: float = defaults.TASK_TIMEOUT,
    ) -> None:
        self.core = core
        #: Seconds each call's answer may take, all its levels together.
        self.rpc_timeout, self.task_timeout = rpc_timeout, task_timeout
        self._running: set[asyncio.Future[object]] = set()

    async def rpc_send(self, recipient_id: object, msg: object) -> asyncio.Future[object]:
        """Once the broker confirmed the request: kiwipy's future of the reply (UnroutableError from the await)."""
        return await _nested(
            lambda pending, sent: self.core.rpc_send(recipient_id, msg, pending, on_sent=sent),
            self.rpc_timeout,
            f"RPC to {recipient_id}",
            self._running,
        )

    async def task_send(self, task: object, no_reply: bool = False, *, queue: str | None = None) -> Any:
        """Once the queue has the task: kiwipy's future of its result; None with ``no_reply``."""
        if no_reply:
            await self.core.task_send(task, True, queue=queue)
            return None
        return await _nested(
            lambda pending, sent: self.core.task_send(task, False, pending, queue=queue, on_sent=sent),
            self.task_timeout,
            "task",
            self._running,
        )

    async def broadcast_send(
        self, body: object, sender: object = None, subject: object = None, correlation_id: object = None
    ) -> bool:
        """Once the broker has the broadcast: True (kiwipy's return value)."""
        await self.core.broadcast_send(body, sender, subject, correlation_id)
        return True

    async def task_queue(self, queue_name: str, prefetch_size: int = 0, prefetch_count: int | None = None) -> Any:
        """kiwipy's ``task_queue``: our named queue (``RmqCommunicator.task_queue``) with kiwipy's ``task_send``."""
        if prefetch_size != 0:
            raise ValueError("prefetch_size must be 0: RabbitMQ does not implement a size limit")
        return KiwipyAsyncTaskQueue(self, await self.core.task_queue(queue_name, prefetch_count))

    async def add_rpc_subscriber(
        self, subscriber: Callable[..., object], identifier: Hashable | None = None
    ) -> Hashable:
        return await self.core.add_rpc_subscriber(subscriber, identifier)

    async def remove_rpc_subscriber(self, identifier: Hashable) -> None:
        await self.core.remove_rpc_subscriber(identifier)

    async def add_task_subscriber(
        self, subscriber: Callable[..., object], identifier: Hashable | None = None
    ) -> Hashable:
        return await self.core.add_task_subscriber(subscriber, identifier)

    async def remove_task_subscriber(self, identifier: Hashable) -> None:
        await self.core.remove_task_subscriber(identifier)

    async def add_broadcast_subscriber(
        self, subscriber: Callable[..., object], identifier: Hashable | None = None
    ) -> Hashable:
        return await self.core.add_broadcast_subscriber(subscriber, identifier)

    async def remove_broadcast_subscriber(self, identifier: Hashable) -> None:
        await self.core.remove_broadcast_subscriber(identifier)

    @property
    def server_properties(self) -> dict[str, object]:
        return self.core.server_properties

    def add_close_callback(self, callback: Callable[..., object], weak: bool = False) -> None:
        self.core.add_close_callback(callback, weak)

    def is_closed(self) -> bool:
        return bool(self.core.is_closed())

    async def close(self) -> None:
        """Close the core (its own calls handed over first, ``RmqCommunicator.close``); idempotent."""
        await self.core.close()

    async def disconnect(self) -> None:
        """kiwipy's name for :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> KiwipyAsyncCommunicator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def connect_kiwipy_async(
    connection_params: str | dict[str, Any] | None = None,
    *,
    codec: str | Codec | None = None,
    rpc_timeout: float = defaults.RPC_TIMEOUT,
    task_timeout: float = defaults.TASK_TIMEOUT,
    **options: Any,
) -> KiwipyAsyncCommunicator:
    """kiwipy's ``rmq.async_connect(...)``, same keywords (docs/migrating.md): a connected communicator with
    kiwipy's asyncio shapes on RabbitMQ. ``async_task_timeout`` bounds nothing here: awaiting a send is bounded
    by the call's deadline."""
    ours = translate(None, codec, {**options, "connection_params": connection_params})
    if ours.url is None:
        raise ValueError("connect_kiwipy_async needs a RabbitMQ URL (amqp:// or amqps://)")
    core = RmqCommunicator(ours.url, codec=ours.codec, **ours.options)
    await core.connect()
    return KiwipyAsyncCommunicator(core, rpc_timeout=rpc_timeout, task_timeout=task_timeout)
