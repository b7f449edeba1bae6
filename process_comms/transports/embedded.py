"""The embedded back end: an in-process communicator with the broker's semantics, for a bare machine.

Messages still go through the codec (so what cannot travel over RabbitMQ fails here too), RPCs to an
unknown pid are unreachable, tasks wait in a queue until a task subscriber takes them, and broadcasts
reach every subscriber asynchronously.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..errors import CommunicatorClosed, DecodeError, EncodeError, ProcessUnreachable
from ..wire.codec import Codec
from ..wire.types import DEFAULT_QUEUE
from ._pulled import PulledTask, take
from .base import (
    AsyncCommunicator,
    ReplyWaiter,
    SendReply,
    exception_reply,
    host_info,
    routing_id,
    settle_task,
)

__all__ = ["EmbeddedCommunicator"]

LOGGER = logging.getLogger(__name__)


class EmbeddedCommunicator(AsyncCommunicator):
    """An in-process communicator: no broker, same semantics; lives on the loop that runs it."""

    def __init__(self, codec: str | Codec | None = None) -> None:
        super().__init__(codec)
        self._tasks: collections.deque[tuple[bytes, ReplyWaiter | None, bool, str]] = collections.deque()
        #: Named task queues (``launch_process(..., queue="gpu")``); the default one is ``_tasks``.
        self._named_tasks: dict[str, collections.deque[tuple[bytes, ReplyWaiter | None, bool, str]]] = {}
        self._running: set[asyncio.Task[object]] = set()
        self._waiters: set[ReplyWaiter] = set()
        self._inflight: dict[asyncio.Task[object], _EmbeddedIncoming] = {}
        self._releasing = False

    def __repr__(self) -> str:
        return f"<EmbeddedCommunicator closed={self._closed}>"

    async def close(self) -> None:
        await self._hand_over_own_calls()
        await super().close()
        for waiter in list(self._waiters):
            waiter.fail(CommunicatorClosed("the communicator was closed before the reply came"))
        for task in list(self._running):
            task.cancel()

    def _spawn(self, coro: Coroutine[object, None, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def reply_sender(self, waiter: ReplyWaiter | None, task_reply: bool) -> SendReply | None:
        """What sends a reply to the caller waiting on ``waiter`` (None: no one waits); a task's reply
        (``task_reply``) names this host."""
        if waiter is None:
            return None

        async def send(reply: dict[str, object]) -> None:
            if task_reply:
                reply = {**reply, "host": host_info()}
            try:
                data = self.codec.encode(reply)
            except EncodeError as exc:
                data = self.codec.encode(exception_reply(exc))
            try:
                waiter.feed(self.codec.decode(data))
            except DecodeError as exc:
                waiter.fail(exc)

        return send

    async def _await_waiter(self, waiter: ReplyWaiter) -> Any:
        self._waiters.add(waiter)
        try:
            return await waiter.future
        finally:
            self._waiters.discard(waiter)

    async def rpc_send(
        self,
        recipient_id: object,
        msg: object,
        on_pending: Callable[[], None] | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        self._ensure_open()
        key = routing_id(recipient_id)
        body = self.codec.encode(msg)
        if key not in self._rpc_subscribers:
            raise ProcessUnreachable(f"process {key} is not reachable: no worker holds it (has it ended?)")
        if on_sent is not None:
            on_sent()
        waiter = ReplyWaiter(asyncio.get_running_loop(), on_pending)
        with self._call_to_self(key) as correlation_id:
            self._spawn(self._handle_rpc(key, body, self.reply_sender(waiter, False), correlation_id))
            return await self._await_waiter(waiter)

    async def broadcast_send(
        self, body: object, sender: object = None, subject: object = None, correlation_id: object = None
    ) -> bool:
        self._ensure_open()
        data = self.codec.encode({"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id})
        self._spawn(self._handle_broadcast(data))
        return True

    async def task_send(
        self,
        task: object,
        no_reply: bool = False,
        on_pending: Callable[[], None] | None = None,
        *,
        queue: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        self._ensure_open()
        body = self.codec.encode((task, no_reply))
        waiter = None if no_reply else ReplyWaiter(asyncio.get_running_loop(), on_pending)
        self._queue_of(queue).append((body, waiter, False, str(uuid.uuid4())))
        if on_sent is not None:
            on_sent()
        self._pump(queue)
        if waiter is None:
            return None
        return await self._await_waiter(waiter)

    async def pull_task(self, timeout: float, *, queue: str | None = None) -> PulledTask | None:
        self._ensure_open()
        tasks = self._queue_of(queue)
        while tasks:
            body, waiter, redelivered, delivery_id = tasks.popleft()
            incoming = _EmbeddedIncoming(self, body, waiter, redelivered, delivery_id, queue)
            pulled = await take(incoming, body, self.codec)
            if pulled is not None:
                return pulled
        return None

    def _queue_of(self, queue: str | None) -> collections.deque[tuple[bytes, ReplyWaiter | None, bool, str]]:
        if queue is None or queue == DEFAULT_QUEUE:
            return self._tasks
        return self._named_tasks.setdefault(queue, collections.deque())

    async def _on_task_subscribers_changed(self, queue: str | None = None, prefetch_count: int | None = None) -> None:
        self._pump(queue)

    def requeue(self, queue: str | None, entry: tuple[bytes, ReplyWaiter | None, bool, str]) -> None:
        """Put a task back on ``queue``: at its head while releasing (the next subscriber continues from the
        checkpoint), else at its end, and deliver it again."""
        tasks = self._queue_of(queue)
        if self._releasing:
            tasks.appendleft(entry)
        else:
            tasks.append(entry)
            self._pump(queue)

    def _pump(self, queue: str | None = None) -> None:
        tasks, subscribers = self._queue_of(queue), self._subscribers_of(queue)
        while tasks and subscribers and not self._closed:
            body, waiter, redelivered, delivery_id = tasks.popleft()
            incoming = _EmbeddedIncoming(self, body, waiter, redelivered, delivery_id, queue)
            task = asyncio.get_running_loop().create_task(self._handle_task(incoming))
            self._inflight[task] = incoming
            task.add_done_callback(lambda t: self._inflight.pop(t, None))

    async def release_tasks(self, suspend: Awaitable[object] | None = None) -> None:
        """Stop taking tasks, await ``suspend``, then put the tasks in progress back at the head of the queue."""
        self._task_subscribers.clear()
        for subscribers in self._named_task_subscribers.values():
            subscribers.clear()
        self._releasing = True
        if suspend is not None:
            await suspend
        inflight = list(self._inflight.items())
        for task, _incoming in inflight:
            task.cancel()  # _handle_task hands each one back unless it was settled already
        if inflight:
            await asyncio.wait([t for t, _ in inflight], timeout=10)
        self._releasing = False

    async def _handle_task(self, incoming: _EmbeddedIncoming) -> None:
        try:
            await settle_task(
                incoming,
                incoming.body,
                list(self._subscribers_of(incoming.queue).values()),
                self.facade,
                self.codec,
                lambda: self._releasing,
            )
        except asyncio.CancelledError:
            if self._releasing and not incoming.settled:
                await incoming.requeue()  # handed back: the next subscriber continues from the checkpoint
            raise


class _EmbeddedIncoming:
    """A task taken from the embedded queue, with the settle verbs of :class:`~.base.IncomingTask`."""

    __slots__ = ("_requeue", "_send", "body", "correlation_id", "queue", "redelivered", "settled", "waiter")

    def __init__(
        self,
        comm: EmbeddedCommunicator,
        body: bytes,
        waiter: ReplyWaiter | None,
        redelivered: bool,
        delivery_id: str,
        queue: str | None = None,
    ) -> None:
        self.body, self.waiter, self.queue = body, waiter, queue
        self.redelivered, self.correlation_id = redelivered, delivery_id
        self._send = comm.reply_sender(waiter, True)
        self._requeue = comm.requeue
        self.settled = False

    async def ack(self) -> bool:
        self.settled = True
        return True

    async def reject(self) -> None:
        self.settled = True

    async def requeue(self) -> None:
        self.settled = True
        self._requeue(self.queue, (self.body, self.waiter, True, self.correlation_id))

    def wants_reply(self, no_reply: bool) -> bool:
        return self._send is not None  # someone awaits this task's reply, whatever the envelope says

    async def reply(self, reply: dict[str, object]) -> None:
        if self._send is not None:
            await self._send(reply)
