"""Request and reply on RabbitMQ: our exclusive reply queues, sending a request, matching its reply.

kiwipy's reply path (shared/wire-protocol.md): a request carries ``reply_to`` (our reply queue, bound to
the exchange with its own name) and a ``correlation_id``; the replier publishes to that routing key. A
reply that no call waits for (late, or stray) is dropped; with ``trusted_reply_users``, so is one whose
RabbitMQ-validated ``user_id`` is not a trusted worker's (issue 13, "Least privilege").
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import aio_pika.abc
import yarl

from ...errors import DecodeError
from ..base import ReplyWaiter, decode
from . import _frames, _topology
from ._connection import RmqConnection

__all__ = ["RmqRequests"]

LOGGER = logging.getLogger(__name__)


class RmqRequests(RmqConnection):
    """:class:`RmqConnection` plus requests that wait for their reply (the base of :class:`RmqCommunicator`)."""

    async def _after_connect(self) -> None:
        self._reply_queues.clear()  # a fresh connection (also a retried connect): nothing declared on it yet
        if self.testing_mode:
            # auto-delete exchanges vanish with their last binding: our reply queues' bindings keep them
            # alive for this communicator's life
            await self._declare_reply_queue("rpc")
            await self._declare_reply_queue("task")

    async def _reply_queue(self, kind: str) -> str:
        """Declare (once) our exclusive reply queue for ``kind`` ('rpc' or 'task') and consume it."""
        name = self._reply_queues.get(kind)
        if name is not None:
            return name
        return await self._shielded(self._declare_reply_queue(kind))

    async def _declare_reply_queue(self, kind: str) -> str:
        async with self._declare_lock:
            name = self._reply_queues.get(kind)
            if name is not None:
                return name
            exchange_name = self.message_exchange_name if kind == "rpc" else self.task_exchange_name
            exchange = self._sub_msg_exchange if kind == "rpc" else self._sub_task_exchange
            spec = _topology.reply_queue(exchange_name, testing_mode=self.testing_mode)
            queue = await self._sub_channel.declare_queue(**spec.declare_kwargs())
            name = spec.name
            await queue.bind(exchange, routing_key=name)
            await queue.consume(self._on_reply, no_ack=True)
            self._reply_queues[kind] = name
            return name

    @property
    def reply_user(self) -> str | None:
        """The broker user our replies name as ``user_id`` (RabbitMQ checks it is the one we logged in as).

        Only for a URL that names its user and authenticates with it (not ``auth_mechanism=EXTERNAL``).
        """
        url = yarl.URL(self._url)
        if not url.user or url.query.get("auth_mechanism", "").upper() == "EXTERNAL":
            return None
        return url.user

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if _frames.refused(message, "reply"):
            return  # it cannot be matched to a call: that call gets its own typed error (a deadline)
        trusted = self.trusted_reply_users
        if trusted is not None and message.user_id not in trusted:
            LOGGER.warning(
                "dropped a reply from broker user %r (correlation id %s): not one of the trusted reply users",
                message.user_id,
                message.correlation_id,
            )
            return
        waiter = self._waiters.get(message.correlation_id or "")
        if waiter is None:
            LOGGER.debug("dropped a reply for no call in flight (late, or stray): %s", message.correlation_id)
            return
        try:
            reply: Any = await decode(self.codec, message.body)
        except DecodeError as exc:  # an undecodable reply fails its call instead of hanging it
            reply = exc
        waiter.feed(reply)

    async def _request(
        self,
        kind: str,
        exchange: aio_pika.abc.AbstractExchange,
        body: bytes,
        routing_key: str,
        *,
        delivery_mode: aio_pika.DeliveryMode,
        wait_for_reply: bool,
        on_pending: Callable[[], None] | None,
        on_published: Callable[[], None],
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> Any:
        """Publish a request (mandatory: unroutable fails) with our reply queue; await the reply if asked.

        ``on_published`` is called once the broker has confirmed the request (see :class:`Handovers`);
        ``correlation_id``: the request's (default a new one).
        """
        reply_to = self._reply_queues.get(kind) or await self._reply_queue(kind)
        correlation_id = correlation_id or str(uuid.uuid4())
        waiter = ReplyWaiter(asyncio.get_running_loop(), on_pending)
        if wait_for_reply:
            self._waiters[correlation_id] = waiter
        try:
            await self._publish(
                exchange,
                body,
                routing_key,
                mandatory=True,
                delivery_mode=delivery_mode,
                correlation_id=correlation_id,
                reply_to=reply_to,
                headers=headers,
            )
            on_published()
            if not wait_for_reply:
                return None
            return await waiter.future
        finally:
            self._waiters.pop(correlation_id, None)
