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
from typing import Any

import aio_pika
import aio_pika.abc

from ... import defaults
from ...errors import ConnectionLost, EncodeError, ProcessUnreachable
from ..base import exception_reply, host_info, routing_id, settle_task
from . import _topology
from ._connection import SETTLE_ERRORS, RmqConnection
from ._incoming import RmqIncoming

__all__ = ["RmqCommunicator"]

LOGGER = logging.getLogger(__name__)


class RmqCommunicator(RmqConnection):
    """An asyncio communicator on RabbitMQ with kiwipy's exchanges, queues and messages.

    ``async with RmqCommunicator(url) as comm:`` connects and closes it.
    """

    async def rpc_send(self, recipient_id: Any, msg: Any, on_pending: Callable[[], None] | None = None) -> Any:
        key = routing_id(recipient_id)
        body = self.codec.encode(msg)
        await self._ready()
        try:
            return await self._guarded(
                self._request(
                    "rpc",
                    self._pub_msg_exchange,
                    body,
                    f"{defaults.RPC_PREFIX}.{key}",
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                    wait_for_reply=True,
                    on_pending=on_pending,
                )
            )
        except ProcessUnreachable:
            raise ProcessUnreachable(
                f"process {key} is not reachable: no worker holds it (is a worker running? has it ended?)"
            ) from None

    async def task_send(self, task: Any, no_reply: bool = False, on_pending: Callable[[], None] | None = None) -> Any:
        body = self.codec.encode((task, no_reply))
        await self._ready()

        async def send() -> Any:
            await self._ensure_task_queue()
            return await self._request(
                "task",
                self._pub_task_exchange,
                body,
                self.task_queue_name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,  # a task outlives a broker restart
                wait_for_reply=not no_reply,
                on_pending=on_pending,
            )

        return await self._guarded(send())

    async def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        data = self.codec.encode({"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id})
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
            await self._publish(exchange, data, reply_to, mandatory=False, correlation_id=correlation_id)
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
        self._handle_broadcast(message.body)

    # -- tasks -----------------------------------------------------------------------------------
    async def _ensure_task_queue(self) -> aio_pika.abc.AbstractQueue:
        if self._task_queue is None:
            return await self._shielded(self._declare_task_queue())
        return self._task_queue

    async def _declare_task_queue(self) -> aio_pika.abc.AbstractQueue:
        if self._task_queue is None:
            async with self._declare_lock:
                if self._task_queue is None:
                    channel = await self._connection.channel()  # type: ignore[union-attr]
                    if self.task_prefetch_count:
                        await channel.set_qos(prefetch_count=self.task_prefetch_count)
                    spec = _topology.task_queue(self.task_queue_name, testing_mode=self.testing_mode)
                    queue = await channel.declare_queue(**spec.declare_kwargs())
                    exchange = await self._declare_exchange(channel, self.task_exchange_name)
                    await queue.bind(exchange, routing_key=self.task_queue_name)
                    self._task_queue = queue
        return self._task_queue

    async def _on_task_subscribers_changed(self) -> None:
        await self._ready()
        queue = await self._ensure_task_queue()
        if self._task_subscribers and self._task_consumer_tag is None:
            self._task_consumer_tag = await queue.consume(self._on_task)
        elif not self._task_subscribers and self._task_consumer_tag is not None:
            tag, self._task_consumer_tag = self._task_consumer_tag, None
            await queue.cancel(tag)

    async def _on_task(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
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
