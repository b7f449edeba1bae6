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
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import CommunicatorClosed, DecodeError, EncodeError, ProcessUnreachable, TaskRejected
from ..wire.codec import Codec
from .base import (
    CURRENT_DELIVERY,
    AsyncCommunicator,
    Delivery,
    ReplyWaiter,
    dispatch_task,
    exception_reply,
    host_info,
    parse_task_envelope,
    routing_id,
)

__all__ = ["EmbeddedCommunicator"]

LOGGER = logging.getLogger(__name__)


class EmbeddedCommunicator(AsyncCommunicator):
    """An in-process communicator: no broker, same semantics; lives on the loop that runs it."""

    def __init__(self, codec: str | Codec | None = None) -> None:
        super().__init__(codec)
        self._tasks: collections.deque[tuple[bytes, ReplyWaiter | None, bool, str]] = collections.deque()
        self._running: set[asyncio.Task[Any]] = set()
        self._waiters: set[ReplyWaiter] = set()
        self._inflight: dict[asyncio.Task[Any], tuple[bytes, ReplyWaiter | None, str]] = {}
        self._releasing = False

    def __repr__(self) -> str:
        return f"<EmbeddedCommunicator closed={self._closed}>"

    async def close(self) -> None:
        await super().close()
        for waiter in list(self._waiters):
            waiter.fail(CommunicatorClosed("the communicator was closed before the reply came"))
        for task in list(self._running):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _reply_sender(self, waiter: ReplyWaiter | None, task_reply: bool) -> Callable[[dict[str, Any]], Any] | None:
        if waiter is None:
            return None

        async def send(reply: dict[str, Any]) -> None:
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

    async def rpc_send(self, recipient_id: Any, msg: Any, on_pending: Callable[[], None] | None = None) -> Any:
        self._ensure_open()
        key = routing_id(recipient_id)
        body = self.codec.encode(msg)
        if key not in self._rpc_subscribers:
            raise ProcessUnreachable(f"process {key} is not reachable: no worker holds it (has it ended?)")
        waiter = ReplyWaiter(asyncio.get_running_loop(), on_pending)
        self._spawn(self._handle_rpc(key, body, self._reply_sender(waiter, False)))
        return await self._await_waiter(waiter)

    async def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        self._ensure_open()
        data = self.codec.encode({"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id})
        asyncio.get_running_loop().call_soon(self._handle_broadcast, data)
        return True

    async def task_send(self, task: Any, no_reply: bool = False, on_pending: Callable[[], None] | None = None) -> Any:
        self._ensure_open()
        body = self.codec.encode((task, no_reply))
        waiter = None if no_reply else ReplyWaiter(asyncio.get_running_loop(), on_pending)
        self._tasks.append((body, waiter, False, str(uuid.uuid4())))
        self._pump()
        if waiter is None:
            return None
        return await self._await_waiter(waiter)

    async def _on_task_subscribers_changed(self) -> None:
        self._pump()

    def _pump(self) -> None:
        while self._tasks and self._task_subscribers and not self._closed:
            body, waiter, redelivered, delivery_id = self._tasks.popleft()
            task = asyncio.get_running_loop().create_task(self._handle_task(body, waiter, redelivered, delivery_id))
            self._inflight[task] = (body, waiter, delivery_id)
            task.add_done_callback(lambda t: self._inflight.pop(t, None))

    async def release_tasks(self, suspend: Awaitable[Any] | None = None) -> None:
        """Stop taking tasks, await ``suspend``, then put the tasks in progress back at the head of the queue."""
        self._task_subscribers.clear()
        self._releasing = True
        if suspend is not None:
            await suspend
        inflight = list(self._inflight.items())
        for task, (body, waiter, delivery_id) in inflight:
            task.cancel()
            self._tasks.appendleft((body, waiter, True, delivery_id))
        if inflight:
            await asyncio.wait([t for t, _ in inflight], timeout=10)
        self._releasing = False

    async def _handle_task(self, body: bytes, waiter: ReplyWaiter | None, redelivered: bool, delivery_id: str) -> None:
        send = self._reply_sender(waiter, True)
        try:
            task, _no_reply = parse_task_envelope(self.codec.decode(body))
        except Exception as exc:  # noqa: BLE001 - a malformed task is settled with an error reply
            if send is not None:
                await send(exception_reply(exc))
            return
        CURRENT_DELIVERY.set(Delivery(delivery_id, redelivered))
        reply = await dispatch_task(list(self._task_subscribers.values()), self.facade, task, send)
        if self._releasing:
            await asyncio.sleep(3600)  # wait to be cancelled and requeued by release_tasks
        if reply is None:
            if not redelivered:
                self._tasks.append((body, waiter, True, delivery_id))
                self._pump()
                return
            reply = exception_reply(TaskRejected("every task subscriber rejected the task"))
        if send is not None:
            await send(reply)
