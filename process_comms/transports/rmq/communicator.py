"""The RabbitMQ back end, on aio-pika, speaking kiwipy 0.9's wire format (see shared/wire-protocol.md).

Differences from kiwipy that peers cannot see: publishes are pipelined (never serialised behind a
confirm), a reply that cannot be decoded fails its call instead of hanging it, a connection loss fails
the calls in flight with :class:`ConnectionLost`, a malformed or rejected task is settled with an error
reply instead of looping, and all RPC routes of one communicator share one exclusive queue.

This module holds the kiwipy verbs (send, subscribe, consume tasks); the connection, publishing and
request/reply are in :mod:`._connection`, the declarations in :mod:`._topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq.exceptions

from ... import defaults
from ...errors import CommunicatorClosed, ConnectionLost, EncodeError, ProcessUnreachable
from ...wire import extensions
from .._pulled import PulledTask, iterate_tasks, next_task, take
from ..base import exception_reply, host_info, routing_id
from . import _frames, _topology
from ._connection import SETTLE_ERRORS
from ._incoming import RmqIncoming
from ._nowait import bind_nowait
from ._requests import RmqRequests
from ._tasks import DEFAULT_QUEUE, TaskQueue, queue_name

__all__ = ["NamedTaskQueue", "RmqCommunicator"]

LOGGER = logging.getLogger(__name__)


class RmqCommunicator(RmqRequests):
    """An asyncio communicator on RabbitMQ with kiwipy's exchanges, queues and messages.

    ``async with RmqCommunicator(url) as comm:`` connects and closes it. ``queue_expires`` (ms, kiwipy's
    option): how long the RPC queue outlives its last consumer.
    """

    def __init__(self, *args: Any, queue_expires: int = defaults.RPC_QUEUE_EXPIRES_MS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(queue_expires, int) or isinstance(queue_expires, bool) or queue_expires <= 0:
            raise ValueError(f"queue_expires must be a positive number of milliseconds, not {queue_expires!r}")
        self.queue_expires = queue_expires
        #: set once a route bind waited for bind-ok (we may bind): later ones go without it (rmq/_nowait.py)
        self._nowait_binds = False

    async def close(self) -> None:
        """Hand its calls to its own subscribers over (``_hand_over_own_calls``), then close; idempotent."""
        await self._hand_over_own_calls()
        await super().close()

    # -- kiwipy's RmqCommunicator API (kiwipy/rmq/communicator.py) --------------------------------
    @property
    def server_properties(self) -> dict[str, Any]:
        """The properties the broker sent when the connection opened (product, version, capabilities)."""
        connection = self._connection
        if connection is None or connection.transport is None:
            return {}
        return dict(connection.transport.connection.server_properties or {})

    def add_close_callback(self, callback: Callable[..., Any], weak: bool = False) -> None:
        """Call ``callback(connection, exc)`` each time the broker connection closes (kiwipy's hook)."""
        if self._connection is None:
            raise CommunicatorClosed("not connected: connect() first")
        self._connection.close_callbacks.add(callback, weak=weak)

    async def disconnect(self) -> None:
        """kiwipy's name for :meth:`close`."""
        await self.close()

    async def task_queue(self, name: str, prefetch_count: int | None = None) -> NamedTaskQueue:
        """kiwipy's ``task_queue(name, prefetch_count=...)``: our named task queue ``name`` (broker name
        ``<task_queue>.<name>``, rmq/_tasks.py ``queue_name``; the default task queue's own name is that
        queue, as AiiDA names its launch queue), as an object with kiwipy's verbs and iteration."""
        await self._ready()
        return NamedTaskQueue(self, DEFAULT_QUEUE if name == self.task_queue_name else name, prefetch_count)

    async def rpc_send(
        self,
        recipient_id: Any,
        msg: Any,
        on_pending: Callable[[], None] | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        self._accepting()
        key = routing_id(recipient_id)
        body = self.codec.encode(msg)
        try:
            with self._call_to_self(key) as correlation_id, self._handovers.handed_over() as confirmed:
                published = _then(confirmed, on_sent)
                await self._ready()
                return await self._guarded(
                    self._request(
                        "rpc",
                        self._pub_msg_exchange,
                        body,
                        f"{defaults.RPC_PREFIX}.{key}",
                        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                        wait_for_reply=True,
                        on_pending=on_pending,
                        on_published=published,
                        correlation_id=correlation_id,
                    )
                )
        except ProcessUnreachable:
            raise ProcessUnreachable(
                f"process {key} is not reachable: no worker holds it (is a worker running? has it ended?)"
                + self._recovery_note()
            ) from None

    async def task_send(
        self,
        task: Any,
        no_reply: bool = False,
        on_pending: Callable[[], None] | None = None,
        *,
        queue: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        self._accepting()
        body = self.codec.encode((task, no_reply))
        target = self._queue(queue)

        async def publish(published: Callable[[], None]) -> Any:
            await target.ensure()
            return await self._request(
                "task",
                self._pub_task_exchange,
                body,
                target.name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,  # a task outlives a broker restart
                wait_for_reply=not no_reply,
                on_pending=on_pending,
                on_published=published,
                headers=extensions.task_headers(wants_pending=on_pending is not None),
            )

        async def send(published: Callable[[], None]) -> Any:
            try:
                return await publish(published)
            except ProcessUnreachable:
                pass  # unroutable: no queue took it, so sending it again cannot duplicate it
            target.forget()  # deleted under us? declare it again
            try:
                return await publish(published)
            except ProcessUnreachable:
                raise ProcessUnreachable(
                    f"task queue {target.name!r} did not take the task: it was deleted or the node that"
                    " holds it is down" + self._recovery_note()
                ) from None

        with self._handovers.handed_over() as confirmed:
            await self._ready()
            return await self._guarded(send(_then(confirmed, on_sent)))

    async def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        self._accepting()
        data = self.codec.encode({"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id})
        with self._handovers.handed_over():
            await self._ready()
            headers = extensions.broadcast_headers(subject, sender)
            await self._guarded(
                self._publish(self._fast_msg_exchange, data, defaults.BROADCAST_KEY, mandatory=False, headers=headers)
            )
        return True

    # -- subscriptions ---------------------------------------------------------------------------
    async def _ensure_rpc_queue(self) -> aio_pika.abc.AbstractQueue:
        if self._rpc_queue is None:
            async with self._declare_lock:
                if self._rpc_queue is None:
                    spec = _topology.rpc_queue(testing_mode=self.testing_mode)
                    spec = dataclasses.replace(spec, arguments={**spec.arguments, "x-expires": self.queue_expires})
                    queue = await self._sub_channel.declare_queue(**spec.declare_kwargs())
                    await queue.consume(self._on_rpc, no_ack=True)
                    self._rpc_queue = queue
        return self._rpc_queue

    async def _on_rpc_added(self, key: str) -> None:
        await self._ready()

        async def bind() -> None:
            queue = await self._ensure_rpc_queue()
            if self._nowait_binds:  # an earlier bind was allowed: no bind-ok on the launch's path (_nowait.py)
                await bind_nowait(queue, self._sub_msg_exchange, f"{defaults.RPC_PREFIX}.{key}", self._fast_channel)
                return
            await queue.bind(self._sub_msg_exchange, routing_key=f"{defaults.RPC_PREFIX}.{key}")
            self._nowait_binds = True

        await self._guarded(self._shielded(bind()))

    async def _on_rpc_removed(self, key: str) -> None:
        if self._rpc_queue is not None and self._connection is not None:
            try:
                await self._rpc_queue.unbind(self._sub_msg_exchange, routing_key=f"{defaults.RPC_PREFIX}.{key}")
            except SETTLE_ERRORS:
                LOGGER.debug("could not unbind %s", key, exc_info=True)

    async def _on_rpc(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if _frames.refused(message, "RPC"):
            return  # consumed without ack (the RPC queue's mode): dropped once, nothing to reply to
        key = (message.routing_key or "")[len(defaults.RPC_PREFIX) + 1 :]
        reply_to, correlation_id = message.reply_to, message.correlation_id

        async def send(reply: dict[str, Any]) -> None:
            await self._send_reply(self._fast_msg_exchange, reply_to or "", correlation_id, reply)

        # aio-pika already runs this callback as a task of its own: handle the RPC here (no extra task and
        # loop turn before the reply), tracked so that close() cancels it like any spawned work
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._handle_rpc(key, message.body, send if reply_to else None, correlation_id)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _send_reply(
        self, exchange: aio_pika.abc.AbstractExchange, reply_to: str, correlation_id: str | None, reply: dict[str, Any]
    ) -> None:
        try:
            data = self.codec.encode(reply)
        except EncodeError as exc:
            data = self.codec.encode(exception_reply(exc) | ({"host": reply["host"]} if "host" in reply else {}))
        try:
            await self._publish(
                exchange, data, reply_to, mandatory=False, correlation_id=correlation_id, user_id=self.reply_user
            )
        except (ConnectionLost, ProcessUnreachable):
            LOGGER.warning("could not send a reply to %s: the connection is down", reply_to)

    async def _on_broadcast_subscribers_changed(self) -> None:
        if self._broadcast_queue is not None:
            return
        await self._ready()
        await self._guarded(self._shielded(self._declare_broadcast_queue()))

    async def _declare_broadcast_queue(self) -> None:
        async with self._declare_lock:
            if self._broadcast_queue is None:
                spec = _topology.broadcast_queue(testing_mode=self.testing_mode)
                queue = await self._sub_channel.declare_queue(**spec.declare_kwargs())
                await queue.bind(self._sub_msg_exchange, routing_key=defaults.BROADCAST_KEY)
                await queue.consume(self._on_broadcast, no_ack=True)
                self._broadcast_queue = queue

    async def _on_broadcast(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if extensions.broadcast_unwanted(message.headers, self._broadcast_subscribers.values()):
            return  # a broadcast of ours that no local subscriber wants: not decoded (wire/extensions.py)
        if not _frames.refused(message, "broadcast"):
            await self._handle_broadcast(message.body)

    # -- liveness ------------------------------------------------------------------------------------
    async def liveness_token(self) -> str:
        """A name that exists on the broker exactly as long as this communicator's connection: an exclusive
        queue, which RabbitMQ deletes when the connection closes or dies (the socket closes with the process)."""
        if self._liveness is None:
            await self._ready()
            name = f"{self.task_queue_name}.worker.{uuid.uuid4().hex}"

            async def declare() -> None:
                spec = _topology.QueueSpec(name, exclusive=True, arguments={"x-queue-type": "classic"})
                await self._sub_channel.declare_queue(**spec.declare_kwargs())

            await self._guarded(self._shielded(declare()))
            self._liveness = name
        return self._liveness

    async def is_alive(self, token: str) -> bool | None:
        """Whether the communicator that holds ``token`` (:meth:`liveness_token`) is still connected.

        A passive declare of another connection's exclusive queue is refused with ``405 RESOURCE_LOCKED``
        while it lives and ``404 NOT_FOUND`` once it is gone; None if the broker cannot tell us now.
        """
        if token == self._liveness:
            return True
        await self._ready()
        try:
            async with self._probe_channel() as channel:
                await channel.queue_declare(queue=token, passive=True)
            return True  # ours, or not exclusive: it exists
        except aiormq.exceptions.ChannelLockedResource:
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        except SETTLE_ERRORS:
            return None

    # -- tasks (one TaskQueue per queue name: rmq/_tasks.py) ---------------------------------------
    def _queue(self, queue: str | None = None, prefetch_count: int | None = None) -> TaskQueue:
        name = queue_name(self.task_queue_name, queue)
        found = self._task_queues.get(name)
        if found is None:
            prefetch = self.task_prefetch_count if prefetch_count is None else prefetch_count
            found = self._task_queues[name] = TaskQueue(self, name, prefetch)
        return found

    async def _on_task_subscribers_changed(self, queue: str | None = None) -> None:
        await self._ready()
        target = self._queue(queue)
        target.subscribers = self._subscribers_of(queue)
        await self._guarded(target.update_consumer())  # e.g. a user who may not consume: AccessRefused

    async def pull_task(self, timeout: float, *, queue: str | None = None) -> PulledTask | None:
        """Take the next task of ``queue`` with ``basic.get`` (unacked until settled: transports/_pulled.py).

        What this communicator handed over before the call is confirmed first, so a task it just sent is there.
        """
        self._accepting()
        await self._ready()
        await self._handovers.wait(timeout)
        target = self._queue(queue)

        async def get() -> PulledTask | None:
            while True:
                declared = await target.ensure()
                message = await declared.get(no_ack=False, fail=False, timeout=timeout)
                if message is None:
                    return None
                if _frames.refused(message, "task"):
                    await message.reject(requeue=False)  # as a consumed one: settled once, no reply
                    continue
                pulled = await take(RmqIncoming(message, self._send_task_reply), message.body, self.codec)
                if pulled is not None:
                    return pulled

        result: PulledTask | None = await self._guarded(get())
        return result

    def _set_prefetch(self, queue: str | None, prefetch_count: int) -> None:
        self._queue(queue, prefetch_count).prefetch_count = prefetch_count

    @property
    def consuming(self) -> bool:
        """True while every queue with subscribers here has its tasks delivered to them.

        False with no task subscriber, while the connection is down, or after the broker cancelled a
        consumer until it is consuming again (the queue's watchdog, rmq/_tasks.py). A supervisor can poll it.
        """
        active = [tq for tq in self._task_queues.values() if tq.subscribers]
        return bool(active) and all(tq.consuming for tq in active)

    def consuming_queues(self) -> dict[str, bool]:
        """``{queue name: consuming}`` for each task queue this communicator has subscribers for."""
        return {tq.name: tq.consuming for tq in self._task_queues.values() if tq.subscribers}

    async def release_tasks(self, suspend: Awaitable[Any] | None = None) -> None:
        """Stop consuming, await ``suspend`` (checkpoint the work), then nack every task in progress."""
        self._releasing = True
        for tq in list(self._task_queues.values()):
            await tq.stop_consuming()
        if suspend is not None:
            await suspend
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=defaults.CLOSE_TIMEOUT)

    async def _send_task_reply(self, message: aio_pika.abc.AbstractIncomingMessage, reply: dict[str, Any]) -> None:
        if message.reply_to:
            await self._send_reply(
                self._fast_task_exchange, message.reply_to, message.correlation_id, {**reply, "host": host_info()}
            )


def _then(first: Callable[[], None], then: Callable[[], None] | None) -> Callable[[], None]:
    """``first`` then ``then`` (if any): a confirmed publish counted, then its sender told."""
    if then is None:
        return first

    def both() -> None:
        first()
        then()

    return both


class NamedTaskQueue:
    """kiwipy's ``RmqTaskQueue`` verbs over one of our named task queues (``task_send``, subscribers)."""

    def __init__(self, comm: RmqCommunicator, name: str, prefetch_count: int | None = None) -> None:
        self.comm, self.name, self.prefetch_count = comm, name, prefetch_count

    async def task_send(self, task: Any, no_reply: bool = False) -> Any:
        """Queue ``task`` on this queue; its final result (None with ``no_reply``, once the broker has it)."""
        return await self.comm.task_send(task, no_reply, queue=self.name)

    async def add_task_subscriber(self, subscriber: Callable[..., Any], identifier: Any = None) -> Any:
        """Receive this queue's tasks; returns the identifier."""
        return await self.comm.add_task_subscriber(
            subscriber, identifier, queue=self.name, prefetch_count=self.prefetch_count
        )

    async def remove_task_subscriber(self, identifier: Any) -> None:
        """Stop receiving this queue's tasks through ``identifier`` (ValueError if unknown, as kiwipy)."""
        await self.comm.remove_task_subscriber(identifier, queue=self.name)

    def _pull(self, timeout: float) -> Awaitable[PulledTask | None]:
        return self.comm.pull_task(timeout, queue=self.name)

    def __aiter__(self) -> AsyncIterator[PulledTask]:
        """``async for task in queue``: every task queued now (kiwipy's), pending ones requeued at the end."""
        return iterate_tasks(self._pull, defaults.TASK_FETCH_TIMEOUT)

    def next_task(
        self, timeout: float = defaults.TASK_FETCH_TIMEOUT, fail: bool = True
    ) -> contextlib.AbstractAsyncContextManager[PulledTask | None]:
        """``async with queue.next_task() as task``: the next queued task, requeued at the end unless taken
        on; :class:`~process_comms.QueueEmpty` if there is none (None with ``fail=False``)."""
        return next_task(self._pull, timeout, fail)
