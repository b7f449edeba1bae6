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
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aio_pika
import aio_pika.abc
import aiormq

from ... import defaults
from ...errors import ConnectionLost, EncodeError, ProcessUnreachable
from ..base import exception_reply, host_info, routing_id, settle_task
from . import _frames, _topology
from ._connection import SETTLE_ERRORS
from ._incoming import RmqIncoming
from ._requests import RmqRequests

__all__ = ["RmqCommunicator"]

LOGGER = logging.getLogger(__name__)


class RmqCommunicator(RmqRequests):
    """An asyncio communicator on RabbitMQ with kiwipy's exchanges, queues and messages.

    ``async with RmqCommunicator(url) as comm:`` connects and closes it.
    """

    async def rpc_send(self, recipient_id: Any, msg: Any, on_pending: Callable[[], None] | None = None) -> Any:
        self._accepting()
        key = routing_id(recipient_id)
        body = self.codec.encode(msg)
        try:
            with self._handovers.handed_over() as published:
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
                    )
                )
        except ProcessUnreachable:
            raise ProcessUnreachable(
                f"process {key} is not reachable: no worker holds it (is a worker running? has it ended?)"
                + self._recovery_note()
            ) from None

    async def task_send(self, task: Any, no_reply: bool = False, on_pending: Callable[[], None] | None = None) -> Any:
        self._accepting()
        body = self.codec.encode((task, no_reply))

        async def publish(published: Callable[[], None]) -> Any:
            await self._ensure_task_queue()
            return await self._request(
                "task",
                self._pub_task_exchange,
                body,
                self.task_queue_name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,  # a task outlives a broker restart
                wait_for_reply=not no_reply,
                on_pending=on_pending,
                on_published=published,
            )

        async def send(published: Callable[[], None]) -> Any:
            try:
                return await publish(published)
            except ProcessUnreachable:
                pass  # unroutable: no queue took it, so sending it again cannot duplicate it
            if self._task_consumer_tag is None:  # (a consuming communicator's watchdog re-declares the queue)
                self._task_queue = None  # deleted under us? declare it again
            try:
                return await publish(published)
            except ProcessUnreachable:
                raise ProcessUnreachable(
                    f"task queue {self.task_queue_name!r} did not take the task: it was deleted or the node that"
                    " holds it is down" + self._recovery_note()
                ) from None

        with self._handovers.handed_over() as published:
            await self._ready()
            return await self._guarded(send(published))

    async def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        self._accepting()
        data = self.codec.encode({"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id})
        with self._handovers.handed_over():
            await self._ready()
            await self._guarded(self._publish(self._fast_msg_exchange, data, defaults.BROADCAST_KEY, mandatory=False))
        return True

    # -- subscriptions ---------------------------------------------------------------------------
    async def _ensure_rpc_queue(self) -> aio_pika.abc.AbstractQueue:
        if self._rpc_queue is None:
            async with self._declare_lock:
                if self._rpc_queue is None:
                    spec = _topology.rpc_queue(testing_mode=self.testing_mode)
                    queue = await self._sub_channel.declare_queue(**spec.declare_kwargs())
                    await queue.consume(self._on_rpc, no_ack=True)
                    self._rpc_queue = queue
        return self._rpc_queue

    async def _on_rpc_added(self, key: str) -> None:
        await self._ready()

        async def bind() -> None:
            queue = await self._ensure_rpc_queue()
            await queue.bind(self._sub_msg_exchange, routing_key=f"{defaults.RPC_PREFIX}.{key}")

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
            await self._handle_rpc(key, message.body, send if reply_to else None)
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
        if not _frames.refused(message, "broadcast"):
            await self._handle_broadcast(message.body)

    # -- tasks -----------------------------------------------------------------------------------
    async def _ensure_task_queue(self) -> aio_pika.abc.AbstractQueue:
        if self._task_queue is None:
            return await self._shielded(self._declare_task_queue())
        return self._task_queue

    async def _declare_task_queue(self) -> aio_pika.abc.AbstractQueue:
        if self._task_queue is None:
            async with self._declare_lock:
                if self._task_queue is None:
                    channel = self._task_channel
                    if channel is None or channel.is_closed:  # one channel, kept: acks of tasks in progress use it
                        channel = await self._connection.channel()  # type: ignore[union-attr]
                        if self.task_prefetch_count:
                            await channel.set_qos(prefetch_count=self.task_prefetch_count)
                        self._task_channel = channel
                    queue, channel, owned = await self._declare_or_use_task_queue(channel)
                    if owned:  # a queue used as it is was bound by whoever declared it
                        exchange = await self._declare_exchange(channel, self.task_exchange_name)
                        await queue.bind(exchange, routing_key=self.task_queue_name)
                    self._task_queue = queue
        return self._task_queue

    async def _declare_or_use_task_queue(
        self, channel: aio_pika.abc.AbstractChannel
    ) -> tuple[aio_pika.abc.AbstractQueue, aio_pika.abc.AbstractChannel, bool]:
        """Declare the task queue, or use it as it is: ``(queue, channel, declared by us)``.

        The broker refuses an inequivalent re-declaration (another peer's arguments, another type) with
        ``406 PRECONDITION_FAILED``, and a user without configure permission on the queue (a least-privilege
        client) with ``403 ACCESS_REFUSED``; either closes the channel, and a passive declare on a fresh
        channel then finds the queue without changing it.
        """
        spec = _topology.task_queue(
            self.task_queue_name, testing_mode=self.testing_mode, queue_type=self.task_queue_type
        )
        try:
            return await channel.declare_queue(**spec.declare_kwargs()), channel, True
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            LOGGER.warning(
                "task queue %r exists with other arguments than ours (%s): using it as it is",
                self.task_queue_name,
                exc.args[0] if exc.args else exc,
            )
        except aiormq.exceptions.ChannelAccessRefused:
            LOGGER.info("no configure permission on task queue %r: using it as it is", self.task_queue_name)
        if not channel.is_closed:
            await channel.close()
        channel = await self._connection.channel()  # type: ignore[union-attr]
        if self.task_prefetch_count:
            await channel.set_qos(prefetch_count=self.task_prefetch_count)
        self._task_channel = channel
        try:
            return await channel.declare_queue(self.task_queue_name, passive=True), channel, False
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ProcessUnreachable(
                f"task queue {self.task_queue_name!r} does not exist and this user may not declare it:"
                " start a worker first (it declares the queue)"
            ) from None

    async def _on_task_subscribers_changed(self) -> None:
        await self._ready()
        await self._guarded(self._update_task_consumer())  # e.g. a user who may not consume: AccessRefused

    async def _update_task_consumer(self) -> None:
        queue = await self._ensure_task_queue()
        if self._task_subscribers and self._task_consumer_tag is None:
            self._task_consumer_tag = await queue.consume(self._on_task)
            self._consumer_lost = False
            if self._consumer_watch is None or self._consumer_watch.done():
                self._consumer_watch = asyncio.get_running_loop().create_task(self._watch_task_consumer())
                self._running.add(self._consumer_watch)
                self._consumer_watch.add_done_callback(self._running.discard)
        elif not self._task_subscribers and self._task_consumer_tag is not None:
            tag, self._task_consumer_tag = self._task_consumer_tag, None
            await queue.cancel(tag)

    @property
    def consuming(self) -> bool:
        """True while this communicator has task subscribers and the broker delivers tasks to them.

        False with no task subscriber, while the connection is down, or after the broker cancelled the
        consumer until it is consuming again (see :meth:`_watch_task_consumer`). A supervisor can poll it.
        """
        connection = self._connection
        return (
            self._task_consumer_tag is not None
            and not self._consumer_lost
            and connection is not None
            and connection.connected.is_set()
        )

    async def _consumer_alive(self) -> bool:
        queue, tag = self._task_queue, self._task_consumer_tag
        if queue is None or tag is None:
            return True  # nothing to watch
        try:
            channel = await cast(aio_pika.RobustChannel, queue.channel).get_underlay_channel()
        except SETTLE_ERRORS:
            return False
        return tag in cast(aiormq.Channel, channel).consumers

    async def _watch_task_consumer(self) -> None:
        """Consume again after the broker cancels our task consumer (``basic.cancel``).

        The broker cancels a consumer when its queue is deleted or the node holding it is lost
        (https://www.rabbitmq.com/docs/consumer-cancel). aiormq forgets such a consumer without a word
        (``aiormq.channel.Channel._on_cancel_frame`` only pops it), so the consumer is checked every
        :data:`~process_comms.defaults.CONSUMER_CHECK_INTERVAL`: when it is gone, log a WARNING,
        re-declare the queue and consume again, backing off up to ``CONSUMER_RETRY_MAX`` seconds.
        """
        delay = defaults.CONSUMER_CHECK_INTERVAL
        while self._task_subscribers and not self._closed and not self._releasing:
            await asyncio.sleep(delay)
            connection = self._connection
            if connection is None or not connection.connected.is_set() or self._task_consumer_tag is None:
                continue  # reconnecting: aio-pika restores the consumer with the connection
            if await self._consumer_alive():
                delay = defaults.CONSUMER_CHECK_INTERVAL
                continue
            if not self._consumer_lost:
                self._consumer_lost = True
                LOGGER.warning(
                    "the broker cancelled the task consumer on queue %r (queue deleted or its node lost): "
                    "declaring it again and consuming",
                    self.task_queue_name,
                )
            try:
                await self._shielded(self._consume_again())
            except (*SETTLE_ERRORS, ConnectionLost) as exc:
                delay = min(delay * 2, defaults.CONSUMER_RETRY_MAX)
                LOGGER.warning("could not consume %r again (%s); retrying in %.0f s", self.task_queue_name, exc, delay)
                continue
            self._consumer_lost = False
            delay = defaults.CONSUMER_CHECK_INTERVAL
            LOGGER.warning("consuming task queue %r again", self.task_queue_name)

    async def _consume_again(self) -> None:
        old_queue, old_tag = self._task_queue, self._task_consumer_tag
        if old_queue is not None and old_tag is not None:
            try:  # forget the dead consumer, so that a reconnection does not restore it beside the new one
                await old_queue.cancel(old_tag)
            except SETTLE_ERRORS:
                LOGGER.debug("could not cancel the lost consumer %s", old_tag, exc_info=True)
        self._task_queue = None
        queue = await self._declare_task_queue()
        self._task_consumer_tag = await queue.consume(self._on_task)

    async def _on_task(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if _frames.refused(message, "task"):
            try:  # settled once: never requeued (it would come back for ever), no reply (nowhere valid)
                await message.reject(requeue=False)
            except SETTLE_ERRORS:
                LOGGER.debug("could not reject a malformed task", exc_info=True)
            return
        task = asyncio.get_running_loop().create_task(self._handle_task(message))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _handle_task(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            await self._settle_task(message)
        except asyncio.CancelledError:
            if self._releasing:
                try:
                    await message.nack(requeue=True)
                except SETTLE_ERRORS:
                    pass
            raise

    async def _settle_task(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await settle_task(
            RmqIncoming(message, self._send_task_reply),
            message.body,
            list(self._task_subscribers.values()),
            self.facade,
            self.codec,
            lambda: self._releasing,
        )

    async def release_tasks(self, suspend: Awaitable[Any] | None = None) -> None:
        """Stop consuming, await ``suspend`` (checkpoint the work), then nack every task in progress."""
        self._releasing = True
        if self._task_queue is not None and self._task_consumer_tag is not None:
            tag, self._task_consumer_tag = self._task_consumer_tag, None
            try:
                await self._task_queue.cancel(tag)
            except SETTLE_ERRORS:
                LOGGER.debug("could not cancel the task consumer", exc_info=True)
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
