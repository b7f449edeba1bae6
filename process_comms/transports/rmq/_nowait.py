"""Frames written straight onto a channel without waiting: a route's ``queue.bind`` and unconfirmed publishes.

**The bind.** A worker binds a process's route (``[rpc].<pid>``) before anything names the pid: its replies and
state broadcasts. AMQP 0-9-1 orders the methods of one channel, and RabbitMQ's channel process handles them one at
a time, completing a ``queue.bind`` (the binding is in the broker's routing table) before it routes the next
``basic.publish`` of that channel, whether or not it sends ``bind-ok``. So a bind sent with ``nowait`` on the
channel that carries our replies and broadcasts (``fast_channel``) is in place before any of them is routed,
and so before anyone who learns the pid from them can send it an RPC: the broker round trip leaves the
launch's critical path. aiormq 6.9 has the ``nowait`` argument but still waits for ``bind-ok`` (``Channel.rpc``
waits for every synchronous method), which never comes: the frame is written here directly. The robust queue is
told of the binding so that it re-binds it after a reconnect, as for one made with ``queue.bind``. A bind the
broker refuses closes that channel instead of raising here: the communicator makes its first route bind with
``bind-ok`` (which finds a missing permission) and only later ones without.

**The publishes.** aiormq's ``Channel.basic_publish`` takes the channel's lock, builds and validates pamqp
objects, marshals them one by one, and then waits, lock held, until the connection's writer task has written
the frames to the socket: two task switches and a lock hand-over per publish, which for a channel without
publisher confirms buys nothing (the bytes are no more delivered once in the socket). :func:`publish_nowait`
marshals ``basic.publish``, the content header and the body in one pass (the same bytes pamqp writes,
tests/transports/test_fast_publish.py) and puts them on the connection's write queue in one piece.

**Order.** Every write here goes through :func:`_write`: straight onto the write queue when it has room and
none of our writes on that channel is waiting for room; otherwise in turn behind the waiting ones (a FIFO lock).
So the writes of one channel reach the socket in the order they were made: a nowait bind stays ahead of every
later publish. aiormq's own calls on the channel (none on ``fast_channel`` after connect) keep their own lock;
their frames and ours interleave only between whole frame sets, which AMQP allows. The connection's write
queue is bounded (aiormq's ``FRAME_BUFFER_SIZE``), so a writer that falls behind still holds publishers back.
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from random import getrandbits
from typing import Any, cast

import aio_pika.abc
import aiormq
import aiormq.exceptions
import pamqp.commands
import pamqp.encode
from aiormq.abc import ChannelFrame
from pamqp.common import FieldTable

__all__ = ["bind_nowait", "marshal_publish", "publish_nowait", "unbind_pipelined"]

_FRAME_END = b"\xce"
#: A frame's header: type (1 method, 2 content header, 3 body), channel, payload size (AMQP 0-9-1, 4.2.3).
_FRAME_HEADER = struct.Struct(">BHI")
#: ``basic.publish``'s class and method ids, then its reserved ``ticket`` (AMQP 0-9-1, 1.8.3.7).
_PUBLISH_IDS = struct.pack(">HHH", 60, 40, 0)
#: A content header's class id, weight and body size.
_CONTENT_HEADER = struct.Struct(">HHQ")
_SHORT = struct.Struct(">H")

# the basic class's property flags (AMQP 0-9-1, 1.8.3.x; pamqp.commands.Basic.Properties.flags)
_HEADERS, _DELIVERY_MODE, _CORRELATION_ID, _REPLY_TO, _MESSAGE_ID, _USER_ID = 8192, 4096, 1024, 512, 128, 16

#: A version-4 UUID's fixed bits, as aiormq sets a ``message_id`` (``UUID(int=getrandbits(128), version=4).hex``).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _short_str(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"an AMQP short string holds at most 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


def marshal_publish(
    channel_number: int,
    frame_max: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    delivery_mode: int = 1,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    user_id: str | None = None,
    headers: FieldTable | None = None,
    message_id: str | None = None,
) -> bytes:
    """``basic.publish`` (not mandatory), its content header and body frames, as aiormq's ``basic_publish`` writes them.

    The properties are the ones ``RmqConnection.publish`` sets, encoded as pamqp encodes them (a property is
    present unless None or empty; ``headers`` always, ``{}`` when None); ``message_id`` defaults to a random
    UUID4 as aiormq's. ``frame_max``: the connection's negotiated frame size (bodies larger are split).
    """
    method = _PUBLISH_IDS + _short_str(exchange) + _short_str(routing_key) + b"\x00"  # mandatory, immediate: off
    flags = _HEADERS | _DELIVERY_MODE | _MESSAGE_ID
    parts = [pamqp.encode.field_table(headers or {}), bytes((delivery_mode,))]
    if correlation_id:
        flags |= _CORRELATION_ID
        parts.append(_short_str(correlation_id))
    if reply_to:
        flags |= _REPLY_TO
        parts.append(_short_str(reply_to))
    if not message_id:
        message_id = f"{(getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"
    parts.append(_short_str(message_id))
    if user_id:
        flags |= _USER_ID
        parts.append(_short_str(user_id))
    properties = b"".join(parts)
    size = len(body)
    header = _CONTENT_HEADER.pack(60, 0, size) + _SHORT.pack(flags) + properties
    frames = [
        _FRAME_HEADER.pack(1, channel_number, len(method)),
        method,
        _FRAME_END,
        _FRAME_HEADER.pack(2, channel_number, len(header)),
        header,
        _FRAME_END,
    ]
    chunk = frame_max - 8  # a body frame's header and end byte count against frame_max
    for start in range(0, size, chunk):
        piece = body[start : start + chunk]
        frames += (_FRAME_HEADER.pack(3, channel_number, len(piece)), piece, _FRAME_END)
    return b"".join(frames)


class _Turns:
    """Our writes on one aiormq channel that wait for room in the write queue, in the order they were made; and
    the unbinds whose ``unbind-ok`` is still to be read (:func:`unbind_pipelined`)."""

    __slots__ = ("lock", "unbinder", "unbinds", "waiting")

    def __init__(self) -> None:
        self.waiting = 0
        self.lock = asyncio.Lock()  # FIFO: the waiting writes go in the order they came
        #: Unbinds to write: their frame, and the future their caller awaits.
        self.unbinds: list[tuple[bytes, asyncio.Future[None]]] = []
        #: The task that writes them and reads their ``unbind-ok``s while it holds aiormq's channel lock.
        self.unbinder: object = None


_TURNS: weakref.WeakKeyDictionary[aiormq.Channel, _Turns] = weakref.WeakKeyDictionary()


def _turns(channel: aiormq.Channel) -> _Turns:
    turns = _TURNS.get(channel)
    if turns is None:
        turns = _TURNS[channel] = _Turns()
    return turns


async def _write(channel: aiormq.Channel, payload: bytes) -> None:
    """Put ``payload`` (whole frames) on ``channel``'s connection write queue after our earlier writes on it."""
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    queue = channel.write_queue
    frame = ChannelFrame(payload=payload, should_close=False)
    turns = _turns(channel)
    if not turns.waiting and not queue.full():
        queue.put_nowait(frame)
        return
    turns.waiting += 1
    try:
        async with turns.lock:
            await queue.put(frame)
    finally:
        turns.waiting -= 1


async def publish_nowait(
    channel: aio_pika.abc.AbstractChannel,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    delivery_mode: int = 1,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    user_id: str | None = None,
    headers: FieldTable | None = None,
) -> None:
    """Publish (not mandatory, no confirm) on ``channel``: the frames go in one piece, without waiting for the socket.

    Raises ``ChannelInvalidStateError`` for a closed channel, as aiormq's ``basic_publish`` does.
    """
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    payload = marshal_publish(
        underlay.number,
        underlay.connection.connection_tune.frame_max,
        exchange,
        routing_key,
        body,
        delivery_mode=delivery_mode,
        correlation_id=correlation_id,
        reply_to=reply_to,
        user_id=user_id,
        headers=headers,
    )
    await _write(underlay, payload)


async def bind_nowait(
    queue: aio_pika.abc.AbstractQueue,
    exchange: aio_pika.abc.AbstractExchange,
    routing_key: str,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    """``queue.bind(exchange, routing_key)`` sent on ``channel`` without waiting for ``bind-ok``."""
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    frame = pamqp.commands.Queue.Bind(queue=queue.name, exchange=exchange.name, routing_key=routing_key, nowait=True)
    await _write(underlay, ChannelFrame.marshall(channel_number=underlay.number, frames=[frame]).payload)
    bindings: Any = getattr(queue, "_bindings", None)
    if isinstance(bindings, dict):  # aio-pika's RobustQueue: restored on reconnect, forgotten by its unbind()
        bindings[(exchange, routing_key)] = {"arguments": None}


async def unbind_pipelined(
    queue: aio_pika.abc.AbstractQueue,
    exchange: aio_pika.abc.AbstractExchange,
    routing_key: str,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    """``queue.unbind(exchange, routing_key)`` on ``channel``, returning once the broker's ``unbind-ok`` came.

    AMQP 0-9-1 gives ``queue.unbind`` no ``nowait``, so its answer has to be read. aiormq's ``queue_unbind``
    holds the channel's lock (and a task of its own) for each round trip; here the unbinds made meanwhile share
    one: a task holds the lock while any are outstanding, writes them in one piece and reads their answers in
    order (no aiormq call on the channel can take an ``unbind-ok`` for its own answer while it does). On the
    channel of the route's bind, the unbind follows it. The futures are the channel's (``create_future``): when
    it closes, aiormq fails them with its error, as it does its own calls'. The robust queue forgets the binding,
    as its own ``unbind`` does.
    """
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    if underlay.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{underlay!r} closed")
    frame = pamqp.commands.Queue.Unbind(queue=queue.name, exchange=exchange.name, routing_key=routing_key)
    payload = ChannelFrame.marshall(channel_number=underlay.number, frames=[frame]).payload
    done: asyncio.Future[None] = underlay.create_future()
    turns = _turns(underlay)
    turns.unbinds.append((payload, done))
    if turns.unbinder is None:
        turns.unbinder = underlay.create_task(_unbinder(underlay, turns))  # aiormq cancels it when the channel closes
    await done
    bindings: Any = getattr(queue, "_bindings", None)
    if isinstance(bindings, dict):
        bindings.pop((exchange, routing_key), None)


async def _unbinder(channel: aiormq.Channel, turns: _Turns) -> None:
    """Write the waiting unbinds and read their ``unbind-ok``s, holding the channel's lock until none is left."""
    batch: list[tuple[bytes, asyncio.Future[None]]] = []
    try:
        async with channel.lock:
            while turns.unbinds:
                batch, turns.unbinds = turns.unbinds, []
                await _write(channel, b"".join(payload for payload, _ in batch))
                for index, (_, done) in enumerate(batch):
                    answer = await channel.rpc_frames.get()
                    channel.rpc_frames.task_done()
                    if not isinstance(answer, pamqp.commands.Queue.UnbindOk):
                        batch = batch[index:]
                        raise aiormq.exceptions.InvalidFrameError(answer)
                    if not done.done():  # its caller may have stopped waiting
                        done.set_result(None)
                batch = []
    except BaseException as exc:
        for _, done in (*batch, *turns.unbinds):
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else aiormq.exceptions.ChannelInvalidStateError())
        turns.unbinds = []
        raise
    finally:
        turns.unbinder = None
