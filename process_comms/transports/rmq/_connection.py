"""The RabbitMQ connection: connect and close, channels and exchanges, publishing, request and reply.

:class:`~process_comms.transports.rmq.RmqCommunicator` builds the kiwipy verbs (send, subscribe, consume
tasks) on this; what is declared comes from :mod:`._topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Coroutine, Sequence
from typing import Any, TypeVar, cast

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq
import aiormq.abc
import aiormq.exceptions
import yarl

from ... import defaults
from ..._compat import TIMEOUT_ERRORS, cancelling, counts_cancellations
from ...errors import (
    BrokerUnavailable,
    CommunicatorClosed,
    ConnectionLost,
    ProcessUnreachable,
)
from ...urls import mask_url, split_urls
from ...wire.codec import Codec
from ..base import AsyncCommunicator, Handovers, ReplyWaiter
from . import _frames, _topology
from ._errors import CONNECTION_ERRORS, SETTLE_ERRORS, access_refused, describe_connect_error
from ._failover import FailoverWatch, connect_first

__all__ = ["CONNECTION_ERRORS", "SETTLE_ERRORS", "RmqConnection"]  # the first two from ._errors

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

#: Connects tried when an auto-delete exchange vanishes between its declare and a bind (testing mode).
_DECLARE_ATTEMPTS = 3


class _ExchangeVanished(Exception):
    """An exchange we had just declared was gone when we bound to it (``connect`` declares again)."""


class RmqConnection(AsyncCommunicator):
    """One robust aio-pika connection with kiwipy's exchanges: the base of :class:`RmqCommunicator`.

    Channels: ``_pub_channel`` (publisher confirms: tasks and RPCs), ``_fast_channel`` (no confirms:
    replies and broadcasts), ``_sub_channel`` (consumers); the task queue gets a channel of its own for
    its prefetch limit.
    """

    def __init__(
        self,
        url: str | Sequence[str] = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        message_exchange: str = defaults.MESSAGE_EXCHANGE,
        task_exchange: str = defaults.TASK_EXCHANGE,
        task_queue: str | None = None,
        task_prefetch_count: int = 0,
        heartbeat: int | None = None,
        codec: str | Codec | None = None,
        testing_mode: bool = False,
        task_queue_type: _topology.QueueType = "classic",
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        reconnect_interval: float = 1.0,
        ssl_options: dict[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        trusted_reply_users: Collection[str] | None = None,
    ) -> None:
        super().__init__(codec)
        #: Every address given (a list, or one string with commas); ``_url`` is the one in use.
        self._urls = split_urls(url)
        self._url = self._urls[0]
        self._failover: FailoverWatch | None = None
        #: True for a user without configure permission on the exchanges: they are declared passively.
        self._passive_exchanges = False
        self._reconnected_at: float | None = None
        #: Accept replies only from these broker users (RabbitMQ validates a message's ``user_id``):
        #: a stray or forged reply is dropped and logged. None accepts every reply (kiwipy peers send none).
        self.trusted_reply_users = None if trusted_reply_users is None else frozenset(trusted_reply_users)
        self.message_exchange_name = message_exchange
        self.task_exchange_name = task_exchange
        self.task_queue_name = task_queue if task_queue is not None else task_exchange
        self.task_prefetch_count = task_prefetch_count
        self.heartbeat = heartbeat
        self.testing_mode = testing_mode
        _topology.task_queue(self.task_queue_name, testing_mode=testing_mode, queue_type=task_queue_type)  # validate
        self.task_queue_type: _topology.QueueType = task_queue_type
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.ssl_options = ssl_options
        self.ssl_context = ssl_context
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._declare_lock = asyncio.Lock()
        self._waiters: dict[str, ReplyWaiter] = {}
        self._reply_queues: dict[str, str] = {}
        self._rpc_queue: aio_pika.abc.AbstractQueue | None = None
        self._broadcast_queue: aio_pika.abc.AbstractQueue | None = None
        #: Task queues by broker name (rmq/_tasks.py: TaskQueue), made on first use.
        self._task_queues: dict[str, Any] = {}
        self._running: set[asyncio.Task[Any]] = set()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._releasing = False
        #: Sends handed over and not yet confirmed by the broker: close() publishes them first.
        self._handovers = Handovers()
        self._closing = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {mask_url(self._url)}"
            f" exchanges={self.message_exchange_name},{self.task_exchange_name}>"
        )

    @property
    def url(self) -> str:
        """The broker URL with the password masked."""
        return mask_url(self._url)

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        async with self._connect_lock:
            for attempt in range(1, _DECLARE_ATTEMPTS + 1):
                try:
                    return await self._connect_once()
                except _ExchangeVanished as vanished:
                    if attempt == _DECLARE_ATTEMPTS:
                        raise BrokerUnavailable(
                            f"could not declare the exchanges on {mask_url(self._url)}: {vanished}"
                        ) from None

    async def _connect_once(self) -> None:
        if self._connection is None:
            self._ensure_open()
            _frames.install()  # a peer's malformed property must not drop our connection
            kwargs: dict[str, Any] = {
                "timeout": self.connect_timeout,
                "reconnect_interval": self.reconnect_interval,
            }
            if self.ssl_context is not None:
                kwargs["ssl_context"] = self.ssl_context
            kwargs.pop("timeout")
            try:
                connection, index = await connect_first(
                    self._urls, self._connection_url, self.connect_timeout, **kwargs
                )
            except TIMEOUT_ERRORS:  # asyncio.wait_for's, which before 3.11 is not the builtin
                raise BrokerUnavailable(
                    f"could not connect to {self._masked_urls()} within {self.connect_timeout} s; is RabbitMQ running?"
                ) from None
            except aiormq.exceptions.ProbableAuthenticationError as exc:
                raise BrokerUnavailable(
                    f"the broker at {mask_url(self._url)} refused the credentials: {exc.args[0] if exc.args else exc}"
                ) from None
            except Exception as exc:  # noqa: BLE001 - every connect failure is BrokerUnavailable, said plainly
                raise BrokerUnavailable(
                    f"could not connect to {self._masked_urls()}: {describe_connect_error(exc)}"
                ) from None
            self._url = self._urls[index]
            self._connection = connection
            self._failover = FailoverWatch(
                connection,
                self._urls,
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
                self._pub_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._sub_channel = await connection.channel()
                self._pub_msg_exchange = await self._declare_exchange(self._pub_channel, self.message_exchange_name)
                self._pub_task_exchange = await self._declare_exchange(self._pub_channel, self.task_exchange_name)
                # replies and broadcasts need no publisher confirm (a lost reply is a caller's deadline, a
                # broadcast is best effort): a channel of their own, so they never wait a broker round trip
                self._fast_channel = await connection.channel(publisher_confirms=False)
                self._fast_msg_exchange = await self._declare_exchange(self._fast_channel, self.message_exchange_name)
                self._fast_task_exchange = await self._declare_exchange(self._fast_channel, self.task_exchange_name)
                self._sub_msg_exchange = await self._declare_exchange(self._sub_channel, self.message_exchange_name)
                self._sub_task_exchange = await self._declare_exchange(self._sub_channel, self.task_exchange_name)
                await self._after_connect()
            except aiormq.exceptions.AMQPError as exc:
                await connection.close()
                self._connection = None
                if self._failover is not None:
                    self._failover.stop()
                    self._failover = None
                if not self._passive_exchanges and isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    # an auto-delete exchange (testing mode) went with its last binding, another connection
                    # closing, between our declare and our bind: declare it again (connect() retries)
                    raise _ExchangeVanished(describe_connect_error(exc)) from None
                if self._passive_exchanges and isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    raise BrokerUnavailable(
                        f"the exchanges {self.message_exchange_name!r} and {self.task_exchange_name!r} do not exist on"
                        f" {mask_url(self._url)} and this user may not declare them (no configure permission):"
                        " start a worker first, or use a user that may"
                    ) from None
                raise BrokerUnavailable(
                    f"could not declare the exchanges on {mask_url(self._url)}: {describe_connect_error(exc)}"
                ) from None

    def _on_reconnected(self, *_args: Any) -> None:
        self._reconnected_at = time.monotonic()

    def _recovery_note(self) -> str:
        """For an unroutable send soon after our connection came back: say that the broker was recovering."""
        since = self._reconnected_at
        if since is None or time.monotonic() - since > defaults.RECOVERY_WINDOW:
            return ""
        return (
            f"; the broker connection came back {time.monotonic() - since:.0f} s ago, so workers may still be"
            " re-declaring their queues and routes: retry shortly"
        )

    def _masked_urls(self) -> str:
        return ", ".join(mask_url(url) for url in self._urls)

    def _on_failover(self, url: str) -> None:
        self._url = url

    def _connection_url(self, address: str | None = None) -> yarl.URL:
        """The URL with ``heartbeat`` and the TLS options (``cafile``, ``certfile``, ...) as query parameters."""
        url = yarl.URL(self._url if address is None else address)
        # the connection's name shows in `rabbitmqctl list_connections client_properties`: who is it
        extra: dict[str, Any] = {"name": f"process_comms {socket.gethostname()}:{os.getpid()}"}
        extra.update(self.ssl_options or {})
        if self.heartbeat is not None:
            extra["heartbeat"] = self.heartbeat
        return url.update_query({key: str(value) for key, value in extra.items()})

    @contextlib.asynccontextmanager
    async def _probe_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A plain aiormq channel for one operation the broker may refuse, which closes the channel.

        Not an aio-pika robust channel: a robust channel that the broker closes reopens itself, and a
        ``close()`` racing that reopen can send a frame on a channel number the broker considers closed,
        which fails the whole connection (``504 CHANNEL_ERROR - expected 'channel.open'``). This one is
        closed by us only if the broker did not close it.
        """
        if self._connection is None or self._connection.transport is None:  # between two connections
            raise ConnectionLost(f"not connected to {mask_url(self._url)} (reconnecting)")
        channel = await self._connection.transport.connection.channel()
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
            async with self._probe_channel() as channel:
                for name in (self.message_exchange_name, self.task_exchange_name):
                    spec = _topology.exchange(name, testing_mode=self.testing_mode)
                    await channel.exchange_declare(
                        exchange=name, exchange_type="topic", durable=False, auto_delete=spec.auto_delete
                    )
        except aiormq.exceptions.ChannelAccessRefused:
            self._passive_exchanges = True
            LOGGER.info("no configure permission on the exchanges: using them as they are")
        except aiormq.exceptions.ChannelPreconditionFailed as exc:  # e.g. a peer's testing mode (auto-delete)
            self._passive_exchanges = True
            LOGGER.warning("the exchanges exist with other properties (%s): using them as they are", exc)

    async def _declare_exchange(
        self, channel: aio_pika.abc.AbstractChannel, name: str
    ) -> aio_pika.abc.AbstractExchange:
        if self._passive_exchanges:
            return await channel.declare_exchange(name, passive=True)
        spec = _topology.exchange(name, testing_mode=self.testing_mode)
        return await channel.declare_exchange(**spec.declare_kwargs())

    async def _after_connect(self) -> None:
        """Declarations a subclass makes once the channels and exchanges exist (none here)."""

    def _accepting(self) -> None:
        """Refuse a new send once close() has begun (those handed over before it are still published)."""
        if self._closing or self._closed:
            raise CommunicatorClosed("the communicator is closed")

    def _on_connection_closed(self, _sender: Any, exc: BaseException | None) -> None:
        error: Exception = (
            CommunicatorClosed("the communicator was closed before the reply came")
            if self._closed
            else ConnectionLost(
                f"lost the connection to {mask_url(self._url)} before the reply came; the outcome is unknown"
            )
        )
        for waiter in list(self._waiters.values()):
            waiter.fail(error)
        self._waiters.clear()

    async def close(self) -> None:
        """Publish what callers handed over (confirmed, bounded in time), then close; idempotent."""
        if self._closed or self._closing:
            return
        self._closing = True  # new sends are refused; those in flight go on
        unconfirmed = await self._handovers.wait(defaults.CLOSE_FLUSH_TIMEOUT)
        if unconfirmed:
            LOGGER.warning(
                "closing %s with %d message(s) the broker had not confirmed within %s s: they may be lost"
                " (their callers' futures fail with CommunicatorClosed)",
                mask_url(self._url),
                unconfirmed,
                defaults.CLOSE_FLUSH_TIMEOUT,
            )
        await super().close()
        if self._failover is not None:
            self._failover.stop()
        for task in list(self._running):
            task.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), defaults.CLOSE_TIMEOUT)
            except Exception:
                LOGGER.debug("error while closing the broker connection", exc_info=True)
        self._on_connection_closed(None, None)

    async def _ready(self) -> None:
        self._ensure_open()
        if self._connection is None:
            await self.connect()
        assert self._connection is not None
        if not self._connection.connected.is_set():
            try:
                await asyncio.wait_for(self._connection.connected.wait(), self.connect_timeout)
            except TIMEOUT_ERRORS:  # asyncio.wait_for's, which before 3.11 is not the builtin
                raise BrokerUnavailable(f"the broker at {mask_url(self._url)} is unreachable (reconnecting)") from None

    # -- publishing ------------------------------------------------------------------------------
    async def _publish(
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
        headers: dict[str, Any] | None = None,
    ) -> None:
        # the properties aio_pika.Message would build, without building a Message (12 µs a publish)
        properties = aiormq.spec.Basic.Properties(
            correlation_id=correlation_id,
            reply_to=reply_to,
            delivery_mode=delivery_mode.value,
            headers={} if headers is None else headers,
            user_id=user_id,
        )
        owner = cast(aio_pika.Exchange, exchange).channel  # every exchange here is one aio-pika declared
        try:
            if owner.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{owner!r} is closed")
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
            raise access_refused(exc, self._url) from None
        except CONNECTION_ERRORS as exc:
            raise ConnectionLost(f"could not publish to {mask_url(self._url)}: {type(exc).__name__}: {exc}") from None

    async def _shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run broker declarations as a task of their own: a caller's deadline or cancel must not cut a
        ``Queue.Declare`` in half (that closes the shared channel for every other user of it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    @counts_cancellations  # cancelling() below, on Python 3.10 too
    async def _guarded(self, coro: Awaitable[Any]) -> Any:
        """Await broker work, turning what a closing or lost connection does to it into typed errors."""
        try:
            return await coro
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and cancelling(task):
                raise  # the caller cancelled: propagate
            if self._closed:
                raise CommunicatorClosed("the communicator was closed while the call was in flight") from None
            raise ConnectionLost(
                f"the connection to {mask_url(self._url)} was reset mid-call; outcome unknown"
            ) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise access_refused(exc, self._url) from None
        except SETTLE_ERRORS as exc:
            if self._closed:
                raise CommunicatorClosed("the communicator was closed while the call was in flight") from None
            raise ConnectionLost(
                f"broker error mid-call on {mask_url(self._url)}: {type(exc).__name__}: {exc}"
            ) from None


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned publish's error is its caller's, who has gone


async def _beyond_cancel(publish: Coroutine[Any, Any, Any]) -> Any:
    """Await a mandatory, confirmed publish where a caller's cancel cannot reach aiormq's confirmation future.

    aiormq 6.9 (``Channel._on_return_frame`` in aiormq/channel.py) sets a ``Basic.Return``'s error on that
    future without checking whether it is still pending. A caller that stops waiting between the publish and
    the return (a deadline, ``wait_for_process`` cancelling its status poll as the process ends and its route
    goes) cancels the future, and the return then raises ``InvalidStateError`` inside the channel's reader:
    the channel wedges, and its close times out into ``504 CHANNEL_ERROR``, which closes the connection.
    Run as a task of its own, the publish completes whatever the caller does (tests/test_rmq_cancel.py).
    """
    task = asyncio.get_running_loop().create_task(publish)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)
