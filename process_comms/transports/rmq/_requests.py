"""Request and reply on RabbitMQ: our exclusive reply queues, sending a request, matching its reply, replying.

kiwipy's reply path (https://github.com/aiidateam/kiwipy/tree/master/src/kiwipy/rmq): a request carries
``reply_to`` (our reply queue, bound to the exchange with its own name) and a ``correlation_id``; the
replier publishes to that routing key. A reply that no call waits for (late, or stray) is dropped; with
``trusted_reply_users``, so is one whose RabbitMQ-validated ``user_id`` is not a trusted worker's
(RELIABILITY.md, tests/transports/test_least_privilege.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection
from typing import Literal

import aio_pika
import aio_pika.abc
import yarl

from ...errors import ConnectionLost, DecodeError, EncodeError, ProcessUnreachable
from ...wire.codec import Codec
from ...wire.messages import exception_reply
from ..base import ReplyWaiter, decode
from . import _frames, _topology
from ._connection import RmqConnection

__all__ = ["ReplyKind", "RmqRequests"]

LOGGER = logging.getLogger(__name__)

ReplyKind = Literal["rpc", "task"]
"""Which exchange a request goes to, and so which of our reply queues its reply comes back on."""


class RmqRequests:
    """Requests that wait for their reply, and replies to others' requests, over one :class:`RmqConnection`."""

    def __init__(
        self, connection: RmqConnection, codec: Codec, trusted_reply_users: Collection[str] | None = None
    ) -> None:
        self.connection = connection
        self.codec = codec
        #: Accept replies only from these broker users (RabbitMQ validates a message's ``user_id``):
        #: a stray or forged reply is dropped and logged. None accepts every reply (kiwipy peers send none).
        self.trusted_reply_users = None if trusted_reply_users is None else frozenset(trusted_reply_users)
        #: Our declared reply queues by kind, on the current connection.
        self.reply_queues: dict[ReplyKind, str] = {}
        self._waiters: dict[str, ReplyWaiter] = {}
        connection.on_connected(self.after_connect)
        connection.on_lost(self.fail_all)

    async def after_connect(self) -> None:
        """On a fresh connection (also a retried connect) nothing is declared yet; in testing mode declare
        the reply queues at once: auto-delete exchanges vanish with their last binding, and our reply
        queues' bindings keep them alive for this communicator's life."""
        self.reply_queues.clear()
        if self.connection.testing_mode:
            await self._declare_reply_queue("rpc")
            await self._declare_reply_queue("task")

    def fail_all(self, error: Exception) -> None:
        """Fail every call waiting for a reply with ``error`` (the connection closed or dropped)."""
        for waiter in list(self._waiters.values()):
            waiter.fail(error)
        self._waiters.clear()

    async def reply_queue(self, kind: ReplyKind) -> str:
        """Declare (once) our exclusive reply queue for ``kind`` and consume it; its name."""
        name = self.reply_queues.get(kind)
        if name is not None:
            return name
        return await self.connection.shielded(self._declare_reply_queue(kind))

    async def _declare_reply_queue(self, kind: ReplyKind) -> str:
        conn = self.connection
        async with conn.declare_lock:
            name = self.reply_queues.get(kind)
            if name is not None:
                return name
            exchange_name = conn.message_exchange_name if kind == "rpc" else conn.task_exchange_name
            exchange = conn.sub_msg_exchange if kind == "rpc" else conn.sub_task_exchange
            spec = _topology.reply_queue(exchange_name, testing_mode=conn.testing_mode)
            queue = await conn.sub_channel.declare_queue(**spec.declare_kwargs())
            name = spec.name
            await queue.bind(exchange, routing_key=name)
            await queue.consume(self._on_reply, no_ack=True)
            self.reply_queues[kind] = name
            return name

    @property
    def reply_user(self) -> str | None:
        """The broker user our replies name as ``user_id`` (RabbitMQ checks it is the one we logged in as).

        Only for a URL that names its user and authenticates with it (not ``auth_mechanism=EXTERNAL``).
        """
        url = yarl.URL(self.connection.address)
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
            reply: object = await decode(self.codec, message.body)
        except DecodeError as exc:  # an undecodable reply fails its call instead of hanging it
            reply = exc
        waiter.feed(reply)

    async def request(
        self,
        kind: ReplyKind,
        exchange: aio_pika.abc.AbstractExchange,
        body: bytes,
        routing_key: str,
        *,
        delivery_mode: aio_pika.DeliveryMode,
        wait_for_reply: bool,
        on_pending: Callable[[], None] | None,
        on_published: Callable[[], None],
        correlation_id: str | None = None,
        headers: dict[str, object] | None = None,
    ) -> object:
        """Publish a request (mandatory: unroutable fails) with our reply queue; await the reply if asked.

        ``on_published`` is called once the broker has confirmed the request (see
        :class:`~process_comms.transports.base.Handovers`); ``correlation_id``: the request's (default a new one).
        """
        reply_to = self.reply_queues.get(kind) or await self.reply_queue(kind)
        correlation_id = correlation_id or str(uuid.uuid4())
        waiter = ReplyWaiter(asyncio.get_running_loop(), on_pending)
        if wait_for_reply:
            self._waiters[correlation_id] = waiter
        try:
            await self.connection.publish(
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
            result: object = await waiter.future
            return result
        finally:
            self._waiters.pop(correlation_id, None)

    async def send_reply(
        self,
        exchange: aio_pika.abc.AbstractExchange,
        reply_to: str,
        correlation_id: str | None,
        reply: dict[str, object],
    ) -> None:
        """Reply to another's request (best effort: a reply lost with the connection is its caller's deadline)."""
        try:
            data = self.codec.encode(reply)
        except EncodeError as exc:
            data = self.codec.encode(exception_reply(exc) | ({"host": reply["host"]} if "host" in reply else {}))
        try:
            await self.connection.publish(
                exchange, data, reply_to, mandatory=False, correlation_id=correlation_id, user_id=self.reply_user
            )
        except (ConnectionLost, ProcessUnreachable):
            LOGGER.warning("could not send a reply to %s: the connection is down", reply_to)
