"""The RabbitMQ connection: connect and close, channels and exchanges, publishing, guarded broker work.

One collaborator of :class:`~process_comms.transports.rmq.RmqCommunicator`; the requests and replies
(:mod:`._requests`) and the task queues (:mod:`._tasks`) publish and declare through it. What is
declared comes from :mod:`._topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TypeVar, cast

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq
import aiormq.abc
import aiormq.exceptions
import yarl
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
from . import _frames, _topology
from ._errors import CONNECTION_ERRORS, SETTLE_ERRORS, access_refused, describe_connect_error
from ._failover import FailoverWatch, connect_first
from ._nowait import publish_nowait

__all__ = ["RmqConnection"]

LOGGER = logging.getLogger(__name__)

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
                    # reconnection) are made here, so they decode short strings leniently (rmq/_frames.py)
                    with _frames.lenient():
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
                # nothing to wait for (no confirm, no return): frames straight onto the channel, in order (_nowait.py)
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
