"""The RabbitMQ back end, on aio-pika, speaking kiwipy 0.9's wire format
(https://github.com/aiidateam/kiwipy/tree/master/src/kiwipy/rmq).

Differences from kiwipy that peers cannot see: publishes are pipelined (never serialised behind a
confirm), a reply that cannot be decoded fails its call instead of hanging it, a connection loss fails
the calls in flight with :class:`ConnectionLost`, a malformed or rejected task is settled with an error
reply instead of looping, and all RPC routes of one communicator share one exclusive queue.

Its parts: :class:`RmqCommunicator` (the kiwipy verbs: send, subscribe, consume tasks, liveness),
:class:`RmqRequests` (request and reply, which RPCs and tasks share) and :class:`NamedTaskQueue` (kiwipy's
task-queue object). The connection, its channels, publishing and the frames written and read beneath aio-pika
are in :mod:`._connection`, the task queues in :mod:`._tasks`, the declarations in :mod:`._topology`.

**Request and reply** follow kiwipy's reply path (https://github.com/aiidateam/kiwipy/tree/master/src/kiwipy/rmq):
a request carries ``reply_to`` (our reply queue, bound to the exchange with its own name) and a
``correlation_id``; the replier publishes to that routing key. A reply that no call waits for (late, or stray)
is dropped; with ``trusted_reply_users``, so is one whose RabbitMQ-validated ``user_id`` is not a trusted
worker's (RELIABILITY.md, tests/transports/test_least_privilege.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from typing import Any, Literal

import aio_pika
import aio_pika.abc
import aiormq.exceptions
import yarl

from ... import defaults
from ...errors import CommunicatorClosed, ConnectionLost, DecodeError, EncodeError, ProcessUnreachable
from ...wire.codec import Codec
from ...wire.messages import broadcast_headers, broadcast_unwanted, exception_reply, task_headers
from .._pulled import PulledTask, iterate_tasks, next_task
from ..base import AsyncCommunicator, Handovers, ReplyWaiter, decode, routing_id
from . import _topology
from ._connection import (
    RmqConnection,
    SslOptions,
    barrier,
    bind_nowait,
    filter_deliveries,
    refused,
    unbind_pipelined,
)
from ._errors import SETTLE_ERRORS
from ._tasks import DEFAULT_QUEUE, TaskQueues

__all__ = ["NamedTaskQueue", "ReplyKind", "RmqCommunicator", "RmqRequests"]

LOGGER = logging.getLogger(__name__)


# == the communicator: the kiwipy verbs ================================================================================


class RmqCommunicator(AsyncCommunicator):
    """An asyncio communicator on RabbitMQ with kiwipy's exchanges, queues and messages.

    ``async with RmqCommunicator(url) as comm:`` connects and closes it. ``queue_expires`` (ms, kiwipy's
    option): how long the RPC queue outlives its last consumer.

    It owns three collaborators and delegates to them: :attr:`connection` (:class:`RmqConnection`: the
    connection, its channels and exchanges, publishing), :attr:`requests` (:class:`RmqRequests`: our
    reply queues, requests that wait for a reply, replies to others) and :attr:`tasks`
    (:class:`~._tasks.TaskQueues`: the task queues it sends to and consumes). What stays here are the
    kiwipy verbs: sending, the RPC and broadcast subscriptions, liveness.
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
        ssl_options: SslOptions | None = None,
        ssl_context: ssl.SSLContext | None = None,
        trusted_reply_users: Collection[str] | None = None,
        queue_expires: int = defaults.RPC_QUEUE_EXPIRES_MS,
    ) -> None:
        super().__init__(codec)
        self.connection = RmqConnection(
            url,
            message_exchange=message_exchange,
            task_exchange=task_exchange,
            heartbeat=heartbeat,
            testing_mode=testing_mode,
            connect_timeout=connect_timeout,
            reconnect_interval=reconnect_interval,
            ssl_options=ssl_options,
            ssl_context=ssl_context,
        )
        self.requests = RmqRequests(self.connection, self.codec, trusted_reply_users)
        self.tasks = TaskQueues(
            self.connection,
            self.codec,
            self.requests.send_reply,
            lambda: self.facade,
            task_queue=task_queue if task_queue is not None else task_exchange,
            prefetch_count=task_prefetch_count,
            queue_type=task_queue_type,
        )
        if not isinstance(queue_expires, int) or isinstance(queue_expires, bool) or queue_expires <= 0:
            raise ValueError(f"queue_expires must be a positive number of milliseconds, not {queue_expires!r}")
        self.queue_expires = queue_expires
        self._rpc_queue: aio_pika.abc.AbstractQueue | None = None
        self._broadcast_queue: aio_pika.abc.AbstractQueue | None = None
        #: Sends handed over and not yet confirmed by the broker: close() publishes them first.
        self._handovers = Handovers()
        self._closing = False
        #: set once a route bind waited for bind-ok (we may bind): later ones go without it (rmq/_connection.py)
        self._nowait_binds = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} exchanges={self.message_exchange_name},{self.task_exchange_name}>"

    # -- the settings, as given (each held by the collaborator that uses it) ------------------------
    @property
    def url(self) -> str:
        """The broker URL with the password masked."""
        return self.connection.url

    @property
    def message_exchange_name(self) -> str:
        """The exchange of RPCs, replies to them and broadcasts (kiwipy's ``message_exchange``)."""
        return self.connection.message_exchange_name

    @property
    def task_exchange_name(self) -> str:
        """The exchange of tasks and their replies (kiwipy's ``task_exchange``)."""
        return self.connection.task_exchange_name

    @property
    def task_queue_name(self) -> str:
        """The broker name of the default task queue (kiwipy's ``task_queue``; default the task exchange's)."""
        return self.tasks.default_name

    @property
    def task_prefetch_count(self) -> int:
        """At most this many tasks of a consumed queue in progress here (0: no limit)."""
        return self.tasks.prefetch_count

    @property
    def task_queue_type(self) -> _topology.QueueType:
        """The type the task queues are declared with (``classic`` or ``quorum``)."""
        return self.tasks.queue_type

    @property
    def testing_mode(self) -> bool:
        """kiwipy's testing mode: auto-delete exchanges and queues."""
        return self.connection.testing_mode

    @property
    def heartbeat(self) -> int | None:
        """The AMQP heartbeat in seconds asked of the broker (None: the broker's)."""
        return self.connection.heartbeat

    @property
    def connect_timeout(self) -> float:
        """Seconds a connect (and waiting for a reconnection) may take."""
        return self.connection.connect_timeout

    @property
    def reconnect_interval(self) -> float:
        """Seconds between reconnection attempts."""
        return self.connection.reconnect_interval

    @property
    def ssl_options(self) -> SslOptions | None:
        """TLS options passed as URL query parameters (``cafile``, ``certfile``, ...)."""
        return self.connection.ssl_options

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the connection, if given."""
        return self.connection.ssl_context

    @property
    def trusted_reply_users(self) -> frozenset[str] | None:
        """Accept replies only from these broker users (None: from any)."""
        return self.requests.trusted_reply_users

    @property
    def reply_user(self) -> str | None:
        """The broker user our replies name as ``user_id`` (see :attr:`RmqRequests.reply_user`)."""
        return self.requests.reply_user

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and declare the exchanges (idempotent); :class:`BrokerUnavailable` if the broker is not there."""
        self._ensure_open()
        await self.connection.connect()

    async def close(self) -> None:
        """Hand its calls to its own subscribers over (``_hand_over_own_calls``), publish what callers handed
        over (confirmed, bounded in time), then close; idempotent."""
        await self._hand_over_own_calls()
        if self._closed or self._closing:
            return
        self._closing = True  # new sends are refused; those in flight go on
        unconfirmed = await self._handovers.wait(defaults.CLOSE_FLUSH_TIMEOUT)
        if unconfirmed:
            LOGGER.warning(
                "closing %s with %d message(s) the broker had not confirmed within %s s: they may be lost"
                " (their callers' futures fail with CommunicatorClosed)",
                self.url,
                unconfirmed,
                defaults.CLOSE_FLUSH_TIMEOUT,
            )
        await super().close()
        await self.connection.close()

    def _accepting(self) -> None:
        """Refuse a new send once close() has begun (those handed over before it are still published)."""
        if self._closing or self._closed:
            raise CommunicatorClosed("the communicator is closed")

    async def _ready(self) -> None:
        self._ensure_open()
        await self.connection.ready()

    # -- kiwipy's RmqCommunicator API (kiwipy/rmq/communicator.py) --------------------------------
    @property
    def server_properties(self) -> dict[str, object]:
        """The properties the broker sent when the connection opened (product, version, capabilities)."""
        connection = self.connection.robust
        if connection is None or connection.transport is None:
            return {}
        return dict(connection.transport.connection.server_properties or {})

    def add_close_callback(self, callback: Callable[..., object], weak: bool = False) -> None:
        """Call ``callback(connection, exc)`` each time the broker connection closes (kiwipy's hook)."""
        if self.connection.robust is None:
            raise CommunicatorClosed("not connected: connect() first")
        self.connection.robust.close_callbacks.add(callback, weak=weak)

    async def disconnect(self) -> None:
        """kiwipy's name for :meth:`close`."""
        await self.close()

    async def task_queue(self, name: str, prefetch_count: int | None = None) -> NamedTaskQueue:
        """kiwipy's ``task_queue(name, prefetch_count=...)``: our named task queue ``name`` (broker name
        ``<task_queue>.<name>``, rmq/_tasks.py ``queue_name``; the default task queue's own name is that
        queue, as AiiDA names its launch queue), as an object with kiwipy's verbs and iteration."""
        await self._ready()
        return NamedTaskQueue(self, DEFAULT_QUEUE if name == self.task_queue_name else name, prefetch_count)

    async def rpc_send(
        self,
        recipient_id: object,
        msg: object,
        on_pending: Callable[[], None] | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        self._accepting()
        key = routing_id(recipient_id)
        body = self.codec.encode(msg)
        conn = self.connection
        try:
            with self._call_to_self(key) as correlation_id, self._handovers.handed_over() as confirmed:
                published = _then(confirmed, on_sent)
                await self._ready()

                def request() -> Awaitable[object]:
                    return self.requests.request(
                        "rpc",
                        conn.pub_msg_exchange,
                        body,
                        f"{defaults.RPC_PREFIX}.{key}",
                        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                        wait_for_reply=True,
                        on_pending=on_pending,
                        on_published=published,
                        correlation_id=correlation_id,
                    )

                try:
                    return await conn.guarded(request())
                except ProcessUnreachable:
                    if not (self._nowait_binds and key in self._rpc_subscribers):
                        raise
                # our own route, bound without bind-ok on another channel (_connection.py): the request may have
                # overtaken the bind. Once the broker has answered on the bind's channel, the route is there.
                await conn.guarded(barrier(conn.fast_channel))
                return await conn.guarded(request())
        except ProcessUnreachable:
            raise ProcessUnreachable(
                f"process {key} is not reachable: no worker holds it (is a worker running? has it ended?)"
                + conn.recovery_note()
            ) from None

    async def task_send(
        self,
        task: object,
        no_reply: bool = False,
        on_pending: Callable[[], None] | None = None,
        *,
        queue: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        self._accepting()
        body = self.codec.encode((task, no_reply))
        target = self.tasks.get(queue)
        conn = self.connection

        async def publish(published: Callable[[], None]) -> object:
            await target.ensure()
            return await self.requests.request(
                "task",
                conn.pub_task_exchange,
                body,
                target.name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,  # a task outlives a broker restart
                wait_for_reply=not no_reply,
                on_pending=on_pending,
                on_published=published,
                headers=task_headers(wants_pending=on_pending is not None),
            )

        async def send(published: Callable[[], None]) -> object:
            try:
                return await publish(published)
            except ProcessUnreachable:
                pass  # unroutable: no queue took it, so sending it again cannot duplicate it
            target.forget()  # deleted under us? declare it again
            try:
                return await publish(published)
            except ProcessUnreachable:
                raise ProcessUnreachable(
                    f"task queue {target.name!r} did not take the task: it was deleted or the node that"
                    " holds it is down" + conn.recovery_note()
                ) from None

        with self._handovers.handed_over() as confirmed:
            await self._ready()
            return await conn.guarded(send(_then(confirmed, on_sent)))

    async def broadcast_send(
        self, body: object, sender: object = None, subject: object = None, correlation_id: object = None
    ) -> bool:
        self._accepting()
        data = self.codec.encode({"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id})
        conn = self.connection
        with self._handovers.handed_over():
            await self._ready()
            headers = broadcast_headers(subject, sender)
            publish = conn.publish(
                conn.fast_msg_exchange, data, defaults.BROADCAST_KEY, mandatory=False, headers=headers
            )
            await conn.guarded(publish)
        return True

    # -- subscriptions ---------------------------------------------------------------------------
    @property
    def rpc_queue(self) -> aio_pika.abc.AbstractQueue | None:
        """Our one exclusive RPC queue (every RPC subscriber's route is a binding of it), once declared."""
        return self._rpc_queue

    async def _ensure_rpc_queue(self) -> aio_pika.abc.AbstractQueue:
        conn = self.connection
        if self._rpc_queue is None:
            async with conn.declare_lock:
                if self._rpc_queue is None:
                    spec = _topology.rpc_queue(testing_mode=conn.testing_mode)
                    spec = dataclasses.replace(spec, arguments={**spec.arguments, "x-expires": self.queue_expires})
                    queue = await conn.sub_channel.declare_queue(**spec.declare_kwargs())
                    await queue.consume(self._on_rpc, no_ack=True)
                    self._rpc_queue = queue
        return self._rpc_queue

    async def _on_rpc_added(self, key: str) -> None:
        await self._ready()
        conn = self.connection
        if self._nowait_binds and self._rpc_queue is not None:
            # one frame put on the channel whole (_connection.py): no broker round trip that a caller's cancel could
            # cut in half, so no task of its own (a cancel before the write leaves no binding, as no subscriber)
            route = f"{defaults.RPC_PREFIX}.{key}"
            await conn.guarded(bind_nowait(self._rpc_queue, conn.sub_msg_exchange, route, conn.fast_channel))
            return

        async def bind() -> None:
            queue = await self._ensure_rpc_queue()
            if self._nowait_binds:  # an earlier bind was allowed: no bind-ok on the launch's path (_connection.py)
                await bind_nowait(queue, conn.sub_msg_exchange, f"{defaults.RPC_PREFIX}.{key}", conn.fast_channel)
                return
            await queue.bind(conn.sub_msg_exchange, routing_key=f"{defaults.RPC_PREFIX}.{key}")
            self._nowait_binds = True

        await conn.guarded(conn.shielded(bind()))

    async def _on_rpc_removed(self, key: str) -> None:
        conn = self.connection
        if self._rpc_queue is not None and conn.robust is not None:
            route = f"{defaults.RPC_PREFIX}.{key}"
            try:
                if self._nowait_binds:  # on the channel of the route's bind, after it; unbinds share round trips
                    await unbind_pipelined(self._rpc_queue, conn.sub_msg_exchange, route, conn.fast_channel)
                else:
                    await self._rpc_queue.unbind(conn.sub_msg_exchange, routing_key=route)
            except SETTLE_ERRORS:
                LOGGER.debug("could not unbind %s", key, exc_info=True)

    async def _on_rpc(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if refused(message, "RPC"):
            return  # consumed without ack (the RPC queue's mode): dropped once, nothing to reply to
        key = (message.routing_key or "")[len(defaults.RPC_PREFIX) + 1 :]
        reply_to, correlation_id = message.reply_to, message.correlation_id
        exchange = self.connection.fast_msg_exchange

        async def send(reply: dict[str, object]) -> None:
            await self.requests.send_reply(exchange, reply_to or "", correlation_id, reply)

        # aio-pika already runs this callback as a task of its own: handle the RPC here (no extra task and
        # loop turn before the reply), tracked so that close() cancels it like any spawned work
        task = asyncio.current_task()
        if task is not None:
            self.connection.track(task)
        await self._handle_rpc(key, message.body, send if reply_to else None, correlation_id)

    async def _on_broadcast_subscribers_changed(self) -> None:
        if self._broadcast_queue is not None:
            return
        await self._ready()
        await self.connection.guarded(self.connection.shielded(self._declare_broadcast_queue()))

    async def _declare_broadcast_queue(self) -> None:
        conn = self.connection
        async with conn.declare_lock:
            if self._broadcast_queue is None:
                spec = _topology.broadcast_queue(testing_mode=conn.testing_mode)
                queue = await conn.sub_channel.declare_queue(**spec.declare_kwargs())
                await queue.bind(conn.sub_msg_exchange, routing_key=defaults.BROADCAST_KEY)
                tag = await queue.consume(self._on_broadcast, no_ack=True)
                # the broadcasts no subscriber here wants go no further than aiormq's task (_connection.py)
                filter_deliveries(await conn.sub_channel.get_underlay_channel(), tag, self._broadcast_unwanted)
                self._broadcast_queue = queue

    def _broadcast_unwanted(self, headers: Mapping[str, object] | None) -> bool:
        return broadcast_unwanted(headers, self._broadcast_subscribers.values())

    async def _on_broadcast(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):  # a closed channel: nothing to filter
            # the first delivery on a new channel (aio-pika consumed again after a reconnect) puts the filter back
            filter_deliveries(message.channel, message.consumer_tag, self._broadcast_unwanted)
        if self._broadcast_unwanted(message.headers):
            return  # a broadcast of ours that no local subscriber wants: not decoded (wire/messages.py)
        if not refused(message, "broadcast"):
            await self._handle_broadcast(message.body)

    # -- liveness ------------------------------------------------------------------------------------
    async def liveness_token(self) -> str:
        """A name that exists on the broker exactly as long as this communicator's connection: an exclusive
        queue, which RabbitMQ deletes when the connection closes or dies (the socket closes with the process)."""
        if self._liveness is None:
            await self._ready()
            conn = self.connection
            name = f"{self.task_queue_name}.worker.{uuid.uuid4().hex}"

            async def declare() -> None:
                spec = _topology.QueueSpec(name, exclusive=True, arguments={"x-queue-type": "classic"})
                await conn.sub_channel.declare_queue(**spec.declare_kwargs())

            await conn.guarded(conn.shielded(declare()))
            self._liveness = name
        return self._liveness

    async def is_alive(self, token: str) -> bool | None:
        """Whether the communicator that holds ``token`` (:meth:`liveness_token`) is still connected.

        A passive declare of another connection's exclusive queue is refused with ``405 RESOURCE_LOCKED``
        while it lives and ``404 NOT_FOUND`` once it is gone; None if the broker cannot tell us now.
        """
        if token == self._liveness:
            return True
        await self._ready()
        try:
            async with self.connection.probe_channel() as channel:
                await channel.queue_declare(queue=token, passive=True)
            return True  # ours, or not exclusive: it exists
        except aiormq.exceptions.ChannelLockedResource:
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        except SETTLE_ERRORS:
            return None

    # -- tasks (the task queues: rmq/_tasks.py) ----------------------------------------------------
    async def _on_task_subscribers_changed(self, queue: str | None = None, prefetch_count: int | None = None) -> None:
        if prefetch_count is not None:
            self.tasks.set_prefetch(queue, prefetch_count)
        await self._ready()
        await self.tasks.subscribers_changed(queue, self._subscribers_of(queue))

    async def pull_task(self, timeout: float, *, queue: str | None = None) -> PulledTask | None:
        """Take the next task of ``queue`` with ``basic.get`` (unacked until settled: transports/_pulled.py).

        What this communicator handed over before the call is confirmed first, so a task it just sent is there.
        """
        self._accepting()
        await self._ready()
        await self._handovers.wait(timeout)
        return await self.connection.guarded(self.tasks.pull(timeout, queue))

    @property
    def consuming(self) -> bool:
        """True while every queue with subscribers here has its tasks delivered to them.

        False with no task subscriber, while the connection is down, or after the broker cancelled a
        consumer until it is consuming again (the queue's watchdog, rmq/_tasks.py). A supervisor can poll it.
        """
        return self.tasks.consuming

    def consuming_queues(self) -> dict[str, bool]:
        """``{queue name: consuming}`` for each task queue this communicator has subscribers for."""
        return self.tasks.consuming_queues()

    async def release_tasks(self, suspend: Awaitable[object] | None = None) -> None:
        """Stop consuming, await ``suspend`` (checkpoint the work), then nack every task in progress."""
        await self.tasks.release(suspend)


def _then(first: Callable[[], None], then: Callable[[], None] | None) -> Callable[[], None]:
    """``first`` then ``then`` (if any): a confirmed publish counted, then its sender told."""
    if then is None:
        return first

    def both() -> None:
        first()
        then()

    return both


# == request and reply: our reply queues, sending a request, matching its reply, replying ==============================

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
        if refused(message, "reply"):
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


# == kiwipy's task-queue object ========================================================================================


class NamedTaskQueue:
    """kiwipy's ``RmqTaskQueue`` verbs over one of our named task queues (``task_send``, subscribers)."""

    def __init__(self, comm: RmqCommunicator, name: str, prefetch_count: int | None = None) -> None:
        self.comm, self.name, self.prefetch_count = comm, name, prefetch_count

    async def task_send(self, task: object, no_reply: bool = False) -> Any:
        """Queue ``task`` on this queue; its final result (None with ``no_reply``, once the broker has it)."""
        return await self.comm.task_send(task, no_reply, queue=self.name)

    async def add_task_subscriber(
        self, subscriber: Callable[..., object], identifier: Hashable | None = None
    ) -> Hashable:
        """Receive this queue's tasks; returns the identifier."""
        return await self.comm.add_task_subscriber(
            subscriber, identifier, queue=self.name, prefetch_count=self.prefetch_count
        )

    async def remove_task_subscriber(self, identifier: Hashable) -> None:
        """Stop receiving this queue's tasks through ``identifier`` (ValueError if unknown, as kiwipy)."""
        await self.comm.remove_task_subscriber(identifier, queue=self.name)

    def _pull(self, timeout: float) -> Awaitable[PulledTask | None]:
        return self.comm.pull_task(timeout, queue=self.name)

    def __aiter__(self) -> AsyncIterator[PulledTask]:
        """``async for task in queue``: every task queued now (kiwipy's), pending ones requeued at the end."""
        return iterate_tasks(self._pull, defaults.TASK_FETCH_TIMEOUT)

    def next_task(
        self, timeout: float = defaults.TASK_FETCH_TIMEOUT, fail: bool = True
    ) -> contextlib.AbstractAsyncContextManager[PulledTask | None]:
        """``async with queue.next_task() as task``: the next queued task, requeued at the end unless taken
        on; :class:`~process_comms.QueueEmpty` if there is none (None with ``fail=False``)."""
        return next_task(self._pull, timeout, fail)
