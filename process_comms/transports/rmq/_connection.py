"""The RabbitMQ connection: connect and close, channels and exchanges, publishing, guarded broker work; the frames
it writes in one piece, and the frames it reads leniently.

One collaborator of :class:`~process_comms.transports.rmq.RmqCommunicator`; the requests and replies
(:class:`~.communicator.RmqRequests`) and the task queues (:mod:`._tasks`) publish and declare through it. What is
declared comes from :mod:`._topology`. Its three parts, in this order:

**The connection** (:class:`RmqConnection`): one robust aio-pika connection, its channels and exchanges, each
publish, and the guard that turns what a closing or lost connection does to broker work into typed errors.

**Frames written in one piece** (:func:`publish_nowait`, :func:`bind_nowait`, :func:`unbind_pipelined`): a
route's ``queue.bind`` and ``queue.unbind``, and unconfirmed publishes, straight onto a channel; :func:`barrier`
waits until the broker has handled what was written on a channel.

*The bind.* A worker binds a process's route (``[rpc].<pid>``) before anything names the pid: its replies and
state broadcasts. AMQP 0-9-1 orders the methods of one channel, and RabbitMQ's channel process handles them one at
a time, completing a ``queue.bind`` (the binding is in the broker's routing table) before it routes the next
``basic.publish`` of that channel, whether or not it sends ``bind-ok``. So a bind sent with ``nowait`` on the
channel that carries our replies and broadcasts (``fast_channel``) is in place before any of them is routed,
and so before anyone who learns the pid from them can send it an RPC: the broker round trip leaves the
launch's critical path. aiormq 6.9 has the ``nowait`` argument but still waits for ``bind-ok`` (``Channel.rpc``
waits for every synchronous method), which never comes: the frame is written here directly. The robust queue is
told of the binding so that it re-binds it after a reconnect, as for one made with ``queue.bind``. A bind the
broker refuses closes that channel instead of raising here: the communicator makes its first route bind with
``bind-ok`` (which finds a missing permission) and only later ones without. A request published on another
channel (a communicator calling its own new route at once) may overtake the bind: the communicator sends it
again once :func:`barrier` returned.

*The publishes.* aiormq's ``Channel.basic_publish`` takes the channel's lock, builds and validates pamqp
objects, marshals them one by one, and then waits, lock held, until the connection's writer task has written
the frames to the socket: two task switches and a lock hand-over per publish, which for a channel without
publisher confirms buys nothing (the bytes are no more delivered once in the socket). :func:`publish_nowait`
marshals ``basic.publish``, the content header and the body in one pass (the same bytes pamqp writes,
tests/transports/test_fast_publish.py) and puts them on the connection's write queue in one piece.

*Order.* Every write here goes through :func:`_write`: straight onto the write queue when it has room and
none of our writes on that channel is waiting for room; otherwise in turn behind the waiting ones (a FIFO lock).
So the writes of one channel reach the socket in the order they were made: a nowait bind stays ahead of every
later publish. aiormq's own calls on the channel (none on ``fast_channel`` after connect) keep their own lock;
their frames and ours interleave only between whole frame sets, which AMQP allows. The connection's write
queue is bounded (aiormq's ``FRAME_BUFFER_SIZE``), so a writer that falls behind still holds publishers back.

**Deliveries dropped beneath aio-pika** (:func:`filter_deliveries`): aiormq hands each delivery to its
consumer, aio-pika's, which builds an ``IncomingMessage`` (every property copied) and a task of its own before
our callback sees it. A delivery whose headers say that no one here wants it (our own broadcasts, back to the
worker that sent them) is dropped in front of aio-pika's consumer, in aiormq's task. aio-pika's robust queue
keeps its own consumer and consumes again with it after a reconnect, on a new channel: the filter is put back
by the first delivery that reaches our callback there.

**Frames read leniently** (:func:`lenient`, :func:`refused`): frames a peer got wrong must not cost us the
connection. pamqp, under aiormq, decodes every AMQP short string (``correlation_id``, ``reply_to``,
``message_id`` and the other basic properties, and header-table keys) as strict UTF-8
(``pamqp.decode.short_str``). One message whose property holds other bytes makes the frame reader raise
``UnicodeDecodeError``, aiormq closes the connection, the broker redelivers the message to the next consumer, and
the loop repeats for ever (RELIABILITY.md, tests/transports/test_poison_headers.py). AMQP 0-9-1 says short
strings carry UTF-8 (https://www.rabbitmq.com/resources/specs/amqp0-9-1.pdf, 4.2.5.3), and RabbitMQ passes them
through unchecked. :func:`install` puts a decoder in pamqp's place that, for our own connections only, decodes
with ``surrogateescape``: the frame is read, and a property that was not UTF-8 arrives with lone surrogates,
which :func:`malformed_property` finds so that the message is settled as malformed. Valid UTF-8 decodes exactly
as before. Our connections are those opened inside :func:`lenient` (the connection's reader and reconnection
tasks are made there, and a task keeps the context it was made in); every other pamqp user in the interpreter
(kiwipy, pika-free aiormq code) decodes strictly as pamqp does (tests/transports/test_frames.py). Installing
twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import socket
import ssl
import struct
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from random import getrandbits
from typing import Any, TypeVar, cast

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq
import aiormq.abc
import aiormq.exceptions
import pamqp.commands
import pamqp.common
import pamqp.decode
import pamqp.encode
import yarl
from aiormq.abc import ChannelFrame
from pamqp.common import FieldTable

from ... import defaults
from ..._compat import TIMEOUT_ERRORS, cancelling, counts_cancellations
from ...errors import (
    BrokerUnavailable,
    CommunicatorClosed,
    ConnectionLost,
    ProcessUnreachable,
)
from ...urls import mask_url, split_urls
from . import _topology
from ._errors import CONNECTION_ERRORS, SETTLE_ERRORS, access_refused, describe_connect_error
from ._failover import FailoverWatch, connect_first

__all__ = [
    "RmqConnection",
    "SslOptions",
    "DeliveryFilter",
    "barrier",
    "bind_nowait",
    "filter_deliveries",
    "install",
    "lenient",
    "malformed_property",
    "marshal_publish",
    "publish_nowait",
    "refused",
    "unbind_pipelined",
]

LOGGER = logging.getLogger(__name__)


# == the connection ====================================================================================================

T = TypeVar("T")

#: Connects tried when an auto-delete exchange vanishes between its declare and a bind (testing mode).
_DECLARE_ATTEMPTS = 3

#: What the TLS options of a URL may hold (``cafile``, ``certfile``, ...): query parameters.
SslOptions = Mapping[str, str | int | bool]


class _ExchangeVanished(Exception):
    """An exchange we had just declared was gone when we bound to it (``connect`` declares again)."""


class RmqConnection:
    """One robust aio-pika connection with kiwipy's two exchanges, declared on three channels.

    Channels: ``pub_channel`` (publisher confirms: tasks and RPCs), ``fast_channel`` (no confirms:
    replies and broadcasts), ``sub_channel`` (consumers); each exchange is declared on each of them
    (``pub_msg_exchange``, ``fast_task_exchange``, ...). A task queue asks for a channel of its own
    (:meth:`new_channel`) for its prefetch limit. Its owner hears of each (re)connect and each loss through
    :meth:`on_connected` and :meth:`on_lost`.
    """

    pub_channel: aio_pika.abc.AbstractChannel
    sub_channel: aio_pika.abc.AbstractChannel
    fast_channel: aio_pika.abc.AbstractChannel
    pub_msg_exchange: aio_pika.abc.AbstractExchange
    pub_task_exchange: aio_pika.abc.AbstractExchange
    fast_msg_exchange: aio_pika.abc.AbstractExchange
    fast_task_exchange: aio_pika.abc.AbstractExchange
    sub_msg_exchange: aio_pika.abc.AbstractExchange
    sub_task_exchange: aio_pika.abc.AbstractExchange

    def __init__(
        self,
        url: str | Sequence[str] = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        message_exchange: str = defaults.MESSAGE_EXCHANGE,
        task_exchange: str = defaults.TASK_EXCHANGE,
        heartbeat: int | None = None,
        testing_mode: bool = False,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        reconnect_interval: float = 1.0,
        ssl_options: SslOptions | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        #: Every address given (a list, or one string with commas); ``address`` is the one in use.
        self.urls = split_urls(url)
        self.address = self.urls[0]
        self.message_exchange_name = message_exchange
        self.task_exchange_name = task_exchange
        self.heartbeat = heartbeat
        self.testing_mode = testing_mode
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.ssl_options = ssl_options
        self.ssl_context = ssl_context
        #: The aio-pika connection while connected (or reconnecting); None before connect() and after close().
        self.robust: aio_pika.abc.AbstractRobustConnection | None = None
        #: Held while declaring a queue that several callers may ask for at once.
        self.declare_lock = asyncio.Lock()
        #: True once close() has begun: no new connection, work in flight fails with CommunicatorClosed.
        self.closed = False
        #: True for a user without configure permission on the exchanges: they are declared passively.
        self.passive_exchanges = False
        self._failover: FailoverWatch | None = None
        self._reconnected_at: float | None = None
        self._connect_lock = asyncio.Lock()
        self._running: set[asyncio.Task[object]] = set()
        self._connected_listeners: list[Callable[[], Awaitable[None]]] = []
        self._lost_listeners: list[Callable[[Exception], None]] = []

    @property
    def url(self) -> str:
        """The broker URL in use, with the password masked."""
        return mask_url(self.address)

    @property
    def connected(self) -> bool:
        """True while the connection is up (not before connect(), while reconnecting, or after close())."""
        return self.robust is not None and self.robust.connected.is_set()

    def on_connected(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Await ``listener()`` on each connect, once the channels and exchanges exist (declare more there)."""
        self._connected_listeners.append(listener)

    def on_lost(self, listener: Callable[[Exception], None]) -> None:
        """Call ``listener(error)`` each time the connection closes or drops: what work waiting on it fails with
        (:class:`CommunicatorClosed` after close(), else :class:`ConnectionLost`)."""
        self._lost_listeners.append(listener)

    def track(self, task: asyncio.Task[object]) -> None:
        """Cancel ``task`` at close() if it is still running then (broker work spawned for this connection)."""
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect to the first address that answers and declare the exchanges (idempotent)."""
        async with self._connect_lock:
            for attempt in range(1, _DECLARE_ATTEMPTS + 1):
                try:
                    # a peer's malformed property must not drop our connection: its tasks (reader,
                    # reconnection) are made here, so they decode short strings leniently (frames read leniently, below)
                    with lenient():
                        return await self._connect_once()
                except _ExchangeVanished as vanished:
                    if attempt == _DECLARE_ATTEMPTS:
                        raise BrokerUnavailable(f"could not declare the exchanges on {self.url}: {vanished}") from None

    def _ensure_open(self) -> None:
        if self.closed:
            raise CommunicatorClosed("the communicator is closed")

    async def _connect_once(self) -> None:
        if self.robust is None:
            self._ensure_open()
            masked = ", ".join(mask_url(url) for url in self.urls)
            try:
                connection, index = await connect_first(
                    self.urls,
                    self._connection_url,
                    self.connect_timeout,
                    reconnect_interval=self.reconnect_interval,
                    ssl_context=self.ssl_context,
                )
            except TIMEOUT_ERRORS:  # asyncio.wait_for's, which before 3.11 is not the builtin
                raise BrokerUnavailable(
                    f"could not connect to {masked} within {self.connect_timeout} s; is RabbitMQ running?"
                ) from None
            except aiormq.exceptions.ProbableAuthenticationError as exc:
                raise BrokerUnavailable(
                    f"the broker at {self.url} refused the credentials: {exc.args[0] if exc.args else exc}"
                ) from None
            except Exception as exc:  # noqa: BLE001 - every connect failure is BrokerUnavailable, said plainly
                raise BrokerUnavailable(f"could not connect to {masked}: {describe_connect_error(exc)}") from None
            self.address = self.urls[index]
            self.robust = connection
            self._failover = FailoverWatch(
                connection,
                self.urls,
                index,
                self._connection_url,
                self.reconnect_interval * 1.5,
                self._on_failover,
            )
            self._failover.start()
            connection.close_callbacks.add(self._on_connection_closed)
            connection.reconnect_callbacks.add(self._on_reconnected)
            try:
                await self._probe_exchanges(connection)
                self.pub_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self.sub_channel = await connection.channel()
                self.pub_msg_exchange = await self.declare_exchange(self.pub_channel, self.message_exchange_name)
                self.pub_task_exchange = await self.declare_exchange(self.pub_channel, self.task_exchange_name)
                # replies and broadcasts need no publisher confirm (a lost reply is a caller's deadline, a
                # broadcast is best effort): a channel of their own, so they never wait a broker round trip
                self.fast_channel = await connection.channel(publisher_confirms=False)
                self.fast_msg_exchange = await self.declare_exchange(self.fast_channel, self.message_exchange_name)
                self.fast_task_exchange = await self.declare_exchange(self.fast_channel, self.task_exchange_name)
                self.sub_msg_exchange = await self.declare_exchange(self.sub_channel, self.message_exchange_name)
                self.sub_task_exchange = await self.declare_exchange(self.sub_channel, self.task_exchange_name)
                for listener in self._connected_listeners:
                    await listener()
            except aiormq.exceptions.AMQPError as exc:
                await connection.close()
                self.robust = None
                if self._failover is not None:
                    self._failover.stop()
                    self._failover = None
                if not self.passive_exchanges and isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    # an auto-delete exchange (testing mode) went with its last binding, another connection
                    # closing, between our declare and our bind: declare it again (connect() retries)
                    raise _ExchangeVanished(describe_connect_error(exc)) from None
                if self.passive_exchanges and isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    raise BrokerUnavailable(
                        f"the exchanges {self.message_exchange_name!r} and {self.task_exchange_name!r} do not exist on"
                        f" {self.url} and this user may not declare them (no configure permission):"
                        " start a worker first, or use a user that may"
                    ) from None
                raise BrokerUnavailable(
                    f"could not declare the exchanges on {self.url}: {describe_connect_error(exc)}"
                ) from None

    def _on_reconnected(self, *_args: object) -> None:
        self._reconnected_at = time.monotonic()

    def recovery_note(self) -> str:
        """For an unroutable send soon after our connection came back: say that the broker was recovering."""
        since = self._reconnected_at
        if since is None or time.monotonic() - since > defaults.RECOVERY_WINDOW:
            return ""
        return (
            f"; the broker connection came back {time.monotonic() - since:.0f} s ago, so workers may still be"
            " re-declaring their queues and routes: retry shortly"
        )

    def _on_failover(self, url: str) -> None:
        self.address = url

    def _connection_url(self, address: str | None = None) -> yarl.URL:
        """The URL with ``heartbeat`` and the TLS options (``cafile``, ``certfile``, ...) as query parameters."""
        url = yarl.URL(self.address if address is None else address)
        # the connection's name shows in `rabbitmqctl list_connections client_properties`: who is it
        extra: dict[str, str | int | bool] = {"name": f"process_comms {socket.gethostname()}:{os.getpid()}"}
        extra.update(self.ssl_options or {})
        if self.heartbeat is not None:
            extra["heartbeat"] = self.heartbeat
        return url.update_query({key: str(value) for key, value in extra.items()})

    @contextlib.asynccontextmanager
    async def probe_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A plain aiormq channel for one operation the broker may refuse, which closes the channel.

        Not an aio-pika robust channel: a robust channel that the broker closes reopens itself, and a
        ``close()`` racing that reopen can send a frame on a channel number the broker considers closed,
        which fails the whole connection (``504 CHANNEL_ERROR - expected 'channel.open'``). This one is
        closed by us only if the broker did not close it.
        """
        if self.robust is None or self.robust.transport is None:  # between two connections
            raise ConnectionLost(f"not connected to {self.url} (reconnecting)")
        channel = await self.robust.transport.connection.channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _probe_exchanges(self, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        """Declare the exchanges on a probe channel; if refused (no configure permission, or they exist with
        other properties), use them as they are, passively.

        A least-privilege client (:mod:`process_comms.transports.rmq.permissions`) may not declare the
        exchanges; the broker refuses with ``403 ACCESS_REFUSED`` and closes the channel it happened on.
        """
        try:
            async with self.probe_channel() as channel:
                for name in (self.message_exchange_name, self.task_exchange_name):
                    spec = _topology.exchange(name, testing_mode=self.testing_mode)
                    await channel.exchange_declare(
                        exchange=name, exchange_type="topic", durable=False, auto_delete=spec.auto_delete
                    )
        except aiormq.exceptions.ChannelAccessRefused:
            self.passive_exchanges = True
            LOGGER.info("no configure permission on the exchanges: using them as they are")
        except aiormq.exceptions.ChannelPreconditionFailed as exc:  # e.g. a peer's testing mode (auto-delete)
            self.passive_exchanges = True
            LOGGER.warning("the exchanges exist with other properties (%s): using them as they are", exc)

    async def declare_exchange(self, channel: aio_pika.abc.AbstractChannel, name: str) -> aio_pika.abc.AbstractExchange:
        """Declare exchange ``name`` on ``channel`` (passively for a user who may not configure it)."""
        if self.passive_exchanges:
            return await channel.declare_exchange(name, passive=True)
        spec = _topology.exchange(name, testing_mode=self.testing_mode)
        return await channel.declare_exchange(**spec.declare_kwargs())

    def _on_connection_closed(self, _sender: object, _exc: BaseException | None) -> None:
        error: Exception = (
            CommunicatorClosed("the communicator was closed before the reply came")
            if self.closed
            else ConnectionLost(f"lost the connection to {self.url} before the reply came; the outcome is unknown")
        )
        for listener in self._lost_listeners:
            listener(error)

    async def close(self) -> None:
        """Stop failing over, cancel the broker work in flight and close the connection; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._failover is not None:
            self._failover.stop()
        for task in list(self._running):
            task.cancel()
        connection, self.robust = self.robust, None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), defaults.CLOSE_TIMEOUT)
            except Exception:
                LOGGER.debug("error while closing the broker connection", exc_info=True)
        self._on_connection_closed(None, None)

    async def new_channel(self, prefetch_count: int = 0) -> aio_pika.abc.AbstractRobustChannel:
        """A channel of its own (a task queue's, for its prefetch limit: ``prefetch_count``, 0 is none)."""
        await self.ready()
        assert self.robust is not None
        channel = cast(aio_pika.abc.AbstractRobustChannel, await self.robust.channel())
        if prefetch_count:
            await channel.set_qos(prefetch_count=prefetch_count)
        return channel

    async def ready(self) -> None:
        """Connected, or :class:`BrokerUnavailable` once ``connect_timeout`` passed (connects at first use)."""
        self._ensure_open()
        if self.robust is None:
            await self.connect()
        assert self.robust is not None
        if not self.robust.connected.is_set():
            try:
                await asyncio.wait_for(self.robust.connected.wait(), self.connect_timeout)
            except TIMEOUT_ERRORS:  # asyncio.wait_for's, which before 3.11 is not the builtin
                raise BrokerUnavailable(f"the broker at {self.url} is unreachable (reconnecting)") from None

    # -- publishing ------------------------------------------------------------------------------
    async def publish(
        self,
        exchange: aio_pika.abc.AbstractExchange,
        body: bytes,
        routing_key: str,
        *,
        mandatory: bool,
        delivery_mode: aio_pika.DeliveryMode = aio_pika.DeliveryMode.NOT_PERSISTENT,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        user_id: str | None = None,
        headers: dict[str, object] | None = None,
    ) -> None:
        owner = cast(aio_pika.Exchange, exchange).channel  # every exchange here is one aio-pika declared
        table = cast("FieldTable", {} if headers is None else headers)  # our extensions: str, bool values
        try:
            if owner.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{owner!r} is closed")
            if not mandatory and not owner.publisher_confirms:
                # nothing to wait for (no confirm, no return): frames straight onto the channel, in order (below)
                await publish_nowait(
                    owner,
                    exchange.name,
                    routing_key,
                    body,
                    delivery_mode=delivery_mode.value,
                    correlation_id=correlation_id,
                    reply_to=reply_to,
                    user_id=user_id,
                    headers=table,
                )
                return
            # the properties aio_pika.Message would build, without building a Message (12 µs a publish)
            properties = aiormq.spec.Basic.Properties(
                correlation_id=correlation_id,
                reply_to=reply_to,
                delivery_mode=delivery_mode.value,
                headers=table,
                user_id=user_id,
            )
            channel = await owner.get_underlay_channel()
            publish = channel.basic_publish(
                body, exchange=exchange.name, routing_key=routing_key, properties=properties, mandatory=mandatory
            )
            if mandatory and owner.publisher_confirms:
                await _beyond_cancel(publish)
            else:
                await publish
        except aio_pika.exceptions.DeliveryError:
            raise ProcessUnreachable(f"no queue is bound to {routing_key!r}") from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise access_refused(exc, self.address) from None
        except CONNECTION_ERRORS as exc:
            raise ConnectionLost(f"could not publish to {self.url}: {type(exc).__name__}: {exc}") from None

    async def shielded(self, coro: Coroutine[object, None, T]) -> T:
        """Run broker declarations as a task of their own: a caller's deadline or cancel must not cut a
        ``Queue.Declare`` in half (that closes the shared channel for every other user of it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.track(task)
        return await asyncio.shield(task)

    @counts_cancellations  # cancelling() below, on Python 3.10 too
    async def guarded(self, coro: Awaitable[T]) -> T:
        """Await broker work, turning what a closing or lost connection does to it into typed errors."""
        try:
            return await coro
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and cancelling(task):
                raise  # the caller cancelled: propagate
            if self.closed:
                raise CommunicatorClosed("the communicator was closed while the call was in flight") from None
            raise ConnectionLost(f"the connection to {self.url} was reset mid-call; outcome unknown") from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise access_refused(exc, self.address) from None
        except SETTLE_ERRORS as exc:
            if self.closed:
                raise CommunicatorClosed("the communicator was closed while the call was in flight") from None
            raise ConnectionLost(f"broker error mid-call on {self.url}: {type(exc).__name__}: {exc}") from None


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned publish's error is its caller's, who has gone


async def _beyond_cancel(publish: Coroutine[object, None, T]) -> T:
    """Await a mandatory, confirmed publish where a caller's cancel cannot reach aiormq's confirmation future.

    aiormq 6.9 (``Channel._on_return_frame`` in aiormq/channel.py) sets a ``Basic.Return``'s error on that
    future without checking whether it is still pending. A caller that stops waiting between the publish and
    the return (a deadline, ``wait_for_process`` cancelling its status poll as the process ends and its route
    goes) cancels the future, and the return then raises ``InvalidStateError`` inside the channel's reader:
    the channel wedges, and its close times out into ``504 CHANNEL_ERROR``, which closes the connection.
    Run as a task of its own, the publish completes whatever the caller does (tests/transports/test_cancelled_calls.py).
    """
    task = asyncio.get_running_loop().create_task(publish)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


# == frames written in one piece: the route's bind and unbind, unconfirmed publishes ===================================

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


def _encode_short_str(value: str) -> bytes:
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
    # the exchange, the routing key, then one byte of bits: mandatory and immediate off
    method = _PUBLISH_IDS + _encode_short_str(exchange) + _encode_short_str(routing_key) + b"\x00"
    flags = _HEADERS | _DELIVERY_MODE | _MESSAGE_ID
    parts = [pamqp.encode.field_table(headers or {}), bytes((delivery_mode,))]
    if correlation_id:
        flags |= _CORRELATION_ID
        parts.append(_encode_short_str(correlation_id))
    if reply_to:
        flags |= _REPLY_TO
        parts.append(_encode_short_str(reply_to))
    if not message_id:
        message_id = f"{(getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"
    parts.append(_encode_short_str(message_id))
    if user_id:
        flags |= _USER_ID
        parts.append(_encode_short_str(user_id))
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


async def barrier(channel: aio_pika.abc.AbstractChannel) -> None:
    """Return once the broker has handled every frame written on ``channel`` before: a ``basic.qos`` that changes
    nothing (the channel has no consumer) and its ``qos-ok``, which comes after them (AMQP orders a channel's
    methods). A request that a nowait bind's route did not take yet can go again after it.

    The frame goes through our writes' order (:func:`_write`), not aiormq's ``basic_qos``: when the write queue is
    full, aiormq's own put could overtake a bind still waiting its turn. Its answer is read holding the channel's
    lock, as the unbinds' are, in a task of the channel's, so a caller's cancel cannot leave a ``qos-ok`` for
    aiormq's next call to take as its own answer."""
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    if underlay.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{underlay!r} closed")
    await asyncio.shield(underlay.create_task(_barrier(underlay)))  # aiormq cancels it if the channel closes


async def _barrier(channel: aiormq.Channel) -> None:
    frame = pamqp.commands.Basic.Qos(prefetch_count=0)
    payload = ChannelFrame.marshall(channel_number=channel.number, frames=[frame]).payload
    async with channel.lock:
        await _write(channel, payload)
        answer = await channel.rpc_frames.get()
        channel.rpc_frames.task_done()
    if not isinstance(answer, pamqp.commands.Basic.QosOk):
        raise aiormq.exceptions.InvalidFrameError(answer)


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


# == deliveries dropped beneath aio-pika ===============================================================================


class DeliveryFilter:
    """A consumer of an aiormq channel in front of another (``passing``, aio-pika's): a delivery whose headers
    ``unwanted`` says no one wants goes no further (see the module docstring)."""

    __slots__ = ("passing", "unwanted")

    def __init__(self, passing: aiormq.abc.ConsumerCallback, unwanted: Callable[[FieldTable | None], bool]) -> None:
        self.passing, self.unwanted = passing, unwanted

    def __call__(self, message: aiormq.abc.DeliveredMessage) -> aiormq.abc.CallbackCoro:
        if self.unwanted(message.header.properties.headers):
            return _dropped()
        return self.passing(message)


async def _dropped() -> None:
    """Nothing: aiormq runs what a consumer returns as a task."""


def filter_deliveries(
    channel: aiormq.abc.AbstractChannel, consumer_tag: str | None, unwanted: Callable[[FieldTable | None], bool]
) -> None:
    """Put a :class:`DeliveryFilter` in front of ``channel``'s consumer ``consumer_tag`` (none there, or one
    already: nothing to do)."""
    consumers = cast(aiormq.Channel, channel).consumers
    current = consumers.get(consumer_tag or "")
    if current is not None and not isinstance(current, DeliveryFilter):
        consumers[consumer_tag or ""] = DeliveryFilter(current, unwanted)


# == frames read leniently: short strings that are not UTF-8 ===========================================================

#: Basic properties that are AMQP short strings (AMQP 0-9-1, section 1.8.3.x "basic" class properties).
SHORT_STRING_PROPERTIES = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
)

_SURROGATE = re.compile("[\udc80-\udcff]")

#: True in the context of our own connections' tasks (:func:`lenient`).
_LENIENT: contextvars.ContextVar[bool] = contextvars.ContextVar("process_comms_lenient_frames", default=False)

#: pamqp's own decoder, used outside our connections.
_STRICT: Callable[[bytes], tuple[int, str]] = pamqp.decode.short_str


def _lenient_short_str(value: bytes) -> tuple[int, str]:
    if not _LENIENT.get():
        return _STRICT(value)
    try:
        length = pamqp.common.Struct.byte.unpack(value[0:1])[0]
    except TypeError:
        raise ValueError("Could not unpack short string value") from None
    return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def install() -> None:
    """Put the scoped decoder in pamqp's place (see the module docstring); idempotent."""
    pamqp.decode.short_str = _lenient_short_str  # field tables look the function up by this name
    pamqp.decode.METHODS["shortstr"] = _lenient_short_str  # basic properties go through this table


@contextlib.contextmanager
def lenient() -> Iterator[None]:
    """Within the block (and in the tasks made in it: a connection's reader), short strings decode leniently."""
    install()
    token = _LENIENT.set(True)
    try:
        yield
    finally:
        _LENIENT.reset(token)


def _short_strings(message: aio_pika.abc.AbstractIncomingMessage) -> tuple[tuple[str, object], ...]:
    """``(name, value)`` of each short-string property of ``message`` (:data:`SHORT_STRING_PROPERTIES`)."""
    return (
        ("content_type", message.content_type),
        ("content_encoding", message.content_encoding),
        ("correlation_id", message.correlation_id),
        ("reply_to", message.reply_to),
        ("expiration", message.expiration),
        ("message_id", message.message_id),
        ("type", message.type),
        ("user_id", message.user_id),
        ("app_id", message.app_id),
    )


def malformed_property(message: aio_pika.abc.AbstractIncomingMessage) -> str | None:
    """The name of the first short-string property of ``message`` that was not UTF-8, or None."""
    for name, value in _short_strings(message):
        if isinstance(value, str) and _SURROGATE.search(value):
            return name
    headers = message.headers or {}
    if any(isinstance(key, str) and _SURROGATE.search(key) for key in headers):
        return "headers"
    return None


def refused(message: aio_pika.abc.AbstractIncomingMessage, kind: str) -> bool:
    """True (and logged at ERROR) if ``message`` has a property that was not UTF-8: settle it as malformed."""
    name = malformed_property(message)
    if name is None:
        return False
    LOGGER.error(
        "refused a malformed %s from exchange %r, routing key %r: its %s is not UTF-8 (AMQP short strings must be)",
        kind,
        message.exchange,
        message.routing_key,
        name,
    )
    return True
