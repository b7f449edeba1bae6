"""A route's ``queue.bind`` sent without waiting for ``bind-ok``, on the channel whose later publishes it must precede.

A worker binds a process's route (``[rpc].<pid>``) before anything names the pid: its replies and state
broadcasts. AMQP 0-9-1 orders the methods of one channel, and RabbitMQ's channel process handles them one at
a time, completing a ``queue.bind`` (the binding is in the broker's routing table) before it routes the next
``basic.publish`` of that channel, whether or not it sends ``bind-ok``. So a bind sent with ``nowait`` on the
channel that carries our replies and broadcasts (``_fast_channel``) is in place before any of them is routed,
and so before anyone who learns the pid from them can send it an RPC: the broker round trip leaves the
launch's critical path.

aiormq 6.9 has the ``nowait`` argument but still waits for ``bind-ok`` (``Channel.rpc`` waits for every
synchronous method), which never comes: the frame is written here directly. The robust queue is told of the
binding so that it re-binds it after a reconnect, as for one made with ``queue.bind``. A bind the broker refuses
closes that channel instead of raising here: the communicator makes its first route bind with ``bind-ok``
(which finds a missing permission) and only later ones without.
"""

from __future__ import annotations

from typing import Any, cast

import aio_pika.abc
import aiormq
import pamqp.commands
from aiormq.abc import ChannelFrame

__all__ = ["bind_nowait"]


async def bind_nowait(
    queue: aio_pika.abc.AbstractQueue,
    exchange: aio_pika.abc.AbstractExchange,
    routing_key: str,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    """``queue.bind(exchange, routing_key)`` sent on ``channel`` without waiting for ``bind-ok``."""
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    frame = pamqp.commands.Queue.Bind(queue=queue.name, exchange=exchange.name, routing_key=routing_key, nowait=True)
    async with underlay.lock:  # after any method the channel is in the middle of, as aiormq's own calls
        await underlay.write_queue.put(ChannelFrame.marshall(channel_number=underlay.number, frames=[frame]))
    bindings: Any = getattr(queue, "_bindings", None)
    if isinstance(bindings, dict):  # aio-pika's RobustQueue: restored on reconnect, forgotten by its unbind()
        bindings[(exchange, routing_key)] = {"arguments": None}
