"""A task delivery from RabbitMQ with the settle verbs of :class:`~process_comms.transports.base.IncomingTask`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aio_pika.abc

from ._errors import SETTLE_ERRORS

__all__ = ["RmqIncoming"]

LOGGER = logging.getLogger(__name__)

ReplySender = Callable[[aio_pika.abc.AbstractIncomingMessage, dict[str, object]], Awaitable[None]]
"""Sends a task's reply (:meth:`~._tasks.TaskQueues.send_reply`)."""


class RmqIncoming:
    """An aio-pika task delivery with the settle verbs of :class:`~process_comms.transports.base.IncomingTask`."""

    __slots__ = ("_message", "_send_reply")

    def __init__(self, message: aio_pika.abc.AbstractIncomingMessage, send_reply: ReplySender) -> None:
        self._message, self._send_reply = message, send_reply

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    @property
    def headers(self) -> dict[str, object]:
        """The task's AMQP headers (our wire extensions, wire/messages.py; kiwipy sends none)."""
        return dict(self._message.headers or {})

    @property
    def correlation_id(self) -> str | None:
        return self._message.correlation_id

    async def ack(self) -> bool:
        try:
            await self._message.ack()
        except SETTLE_ERRORS:
            LOGGER.warning("could not ack a task: the channel closed; the broker will redeliver it")
            return False
        return True

    async def requeue(self) -> None:
        await self._message.nack(requeue=True)

    def wants_reply(self, no_reply: bool) -> bool:
        return bool(self._message.reply_to) and not no_reply

    async def reject(self) -> None:
        await self._message.reject(requeue=False)

    async def reply(self, reply: dict[str, object]) -> None:
        await self._send_reply(self._message, reply)
