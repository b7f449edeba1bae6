"""Task queues on RabbitMQ: the default one and named ones, each declared, consumed and watched on its own; and a
task delivery with its settle verbs.

A communicator sends tasks to any of its installation's task queues and consumes those it has
subscribers for. Each consumed queue has a channel of its own, so its prefetch count is a per-queue
limit on the tasks in progress (a worker's "slots" for that queue). Queue names: the default task queue
is ``task_queue`` (kiwipy's); a named queue ``gpu`` is ``<task_queue>.gpu`` (:func:`queue_name`), so it
stays in the installation's namespace and in the least-privilege patterns.

Its parts: :class:`TaskQueues` (a communicator's task queues, the tasks in progress, their hand-back),
:class:`TaskQueue` (one queue: declaration, consumer, watchdog, settlement) and :class:`RmqIncoming` (a task
delivery with the settle verbs of :class:`~process_comms.transports.base.IncomingTask`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import cast

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.abc
import aiormq.exceptions

from ... import defaults
from ..._compat import TIMEOUT_ERRORS
from ...errors import ProcessCommsError, ProcessUnreachable
from ...wire.codec import Codec
from ...wire.names import DEFAULT_QUEUE, queue_name  # re-exported: their old home
from .._pulled import PulledTask, take
from ..base import TaskSubscriber, host_info, settle_task
from . import _topology
from ._connection import RmqConnection, refused
from ._errors import SETTLE_ERRORS

__all__ = ["DEFAULT_QUEUE", "Replier", "RmqIncoming", "TaskQueue", "TaskQueues", "queue_name"]

LOGGER = logging.getLogger(__name__)

Replier = Callable[[aio_pika.abc.AbstractExchange, str, "str | None", dict[str, object]], Awaitable[None]]
"""Sends a reply to another's request: ``(exchange, reply_to, correlation_id, reply)``."""


class TaskQueues:
    """A communicator's task queues by broker name (made on first use), and the tasks in progress from them.

    ``codec`` decodes the task bodies; ``replier`` sends a task's reply (the communicator's
    :meth:`~.communicator.RmqRequests.send_reply`); ``facade`` gives the object handed to task subscribers as
    their ``communicator`` argument (the communicator's, which a thread-facing wrapper replaces after
    construction).
    """

    def __init__(
        self,
        connection: RmqConnection,
        codec: Codec,
        replier: Replier,
        facade: Callable[[], object],
        *,
        task_queue: str,
        prefetch_count: int = 0,
        queue_type: _topology.QueueType = "classic",
    ) -> None:
        _topology.task_queue(task_queue, testing_mode=connection.testing_mode, queue_type=queue_type)  # validate
        self.connection = connection
        #: The codec task bodies are decoded with.
        self.codec = codec
        self.replier = replier
        self.facade = facade
        #: The broker name of the default task queue (kiwipy's ``task_queue``).
        self.default_name = task_queue
        #: Each consumed queue's limit on tasks in progress here, unless its first subscriber sets one.
        self.prefetch_count = prefetch_count
        self.queue_type: _topology.QueueType = queue_type
        self.queues: dict[str, TaskQueue] = {}
        #: Tasks in progress here (delivered, not settled): release() hands them back.
        self.inflight: set[asyncio.Task[None]] = set()
        #: True once release() has begun: no task is taken on, those in progress are handed back.
        self.releasing = False

    def get(self, queue: str | None = None, prefetch_count: int | None = None) -> TaskQueue:
        """Task queue ``queue`` (None or ``default``: the default one), made on first use."""
        name = queue_name(self.default_name, queue)
        found = self.queues.get(name)
        if found is None:
            prefetch = self.prefetch_count if prefetch_count is None else prefetch_count
            found = self.queues[name] = TaskQueue(self, name, prefetch)
        return found

    def set_prefetch(self, queue: str | None, prefetch_count: int) -> None:
        """Limit the tasks of ``queue`` in progress here to ``prefetch_count`` (0: no limit)."""
        self.get(queue, prefetch_count).prefetch_count = prefetch_count

    async def subscribers_changed(self, queue: str | None, subscribers: dict[Hashable, TaskSubscriber]) -> None:
        """``queue`` has these subscribers now: consume it while it has any."""
        target = self.get(queue)
        target.subscribers = subscribers
        await self.connection.guarded(target.update_consumer())  # e.g. a user who may not consume: AccessRefused

    @property
    def consuming(self) -> bool:
        """True while every queue with subscribers here has its tasks delivered to them."""
        active = [tq for tq in self.queues.values() if tq.subscribers]
        return bool(active) and all(tq.consuming for tq in active)

    def consuming_queues(self) -> dict[str, bool]:
        """``{queue name: consuming}`` for each task queue with subscribers here."""
        return {tq.name: tq.consuming for tq in self.queues.values() if tq.subscribers}

    def take_on(self, task: asyncio.Task[None]) -> None:
        """Count ``task`` (a delivery being settled) in progress until it is done."""
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def release(self, suspend: Awaitable[object] | None = None) -> None:
        """Stop consuming, await ``suspend`` (checkpoint the work), then nack every task in progress."""
        self.releasing = True
        for tq in list(self.queues.values()):
            await tq.stop_consuming()
        if suspend is not None:
            await suspend
        tasks = list(self.inflight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=defaults.CLOSE_TIMEOUT)

    async def send_reply(self, message: aio_pika.abc.AbstractIncomingMessage, reply: dict[str, object]) -> None:
        """Reply to a task's sender (if it asked for replies), naming this host."""
        if message.reply_to:
            await self.replier(
                self.connection.fast_task_exchange,
                message.reply_to,
                message.correlation_id,
                {**reply, "host": host_info()},
            )

    async def pull(self, timeout: float, queue: str | None = None) -> PulledTask | None:
        """Take the next task of ``queue`` with ``basic.get`` (unacked until settled: transports/_pulled.py)."""
        target = self.get(queue)
        while True:
            declared = await target.ensure()
            message = await declared.get(no_ack=False, fail=False, timeout=timeout)
            if message is None:
                return None
            if refused(message, "task"):
                await message.reject(requeue=False)  # as a consumed one: settled once, no reply
                continue
            pulled = await take(RmqIncoming(message, self.send_reply), message.body, self.codec)
            if pulled is not None:
                return pulled


class TaskQueue:
    """One task queue of a communicator: declaration, subscribers, consumer, watchdog, settlement."""

    def __init__(self, owner: TaskQueues, name: str, prefetch_count: int) -> None:
        self.owner = owner
        self.connection = owner.connection
        self.name = name
        self.prefetch_count = prefetch_count
        self.subscribers: dict[Hashable, TaskSubscriber] = {}
        self.queue: aio_pika.abc.AbstractQueue | None = None
        self.channel: aio_pika.abc.AbstractRobustChannel | None = None
        self.consumer_tag: str | None = None
        self.lost = False
        self._watch: asyncio.Task[None] | None = None

    # -- declaring -------------------------------------------------------------------------------
    async def ensure(self) -> aio_pika.abc.AbstractQueue:
        """The declared queue (declared once; again after :meth:`forget`)."""
        if self.queue is None:
            return await self.connection.shielded(self._declare())
        return self.queue

    def forget(self) -> None:
        """Declare the queue again at the next send (it may have been deleted)."""
        if self.consumer_tag is None:  # a consumed queue's watchdog declares it again itself
            self.queue = None

    async def _new_channel(self) -> aio_pika.abc.AbstractRobustChannel:
        self.channel = await self.connection.new_channel(self.prefetch_count)
        return self.channel

    async def _declare(self) -> aio_pika.abc.AbstractQueue:
        conn = self.connection
        async with conn.declare_lock:
            if self.queue is None:
                channel = self.channel
                if channel is None or channel.is_closed:  # one channel, kept: acks of tasks in progress use it
                    channel = await self._new_channel()
                queue, channel, owned = await self._declare_or_use(channel)
                if owned:
                    exchange = await conn.declare_exchange(channel, conn.task_exchange_name)
                    await queue.bind(exchange, routing_key=self.name)
                else:
                    await self._bind_if_allowed()
                self.queue = queue
        assert self.queue is not None
        return self.queue

    async def _bind_if_allowed(self) -> None:
        """Bind a queue we did not declare to the task exchange, if this user may (on a probe channel: a
        refusal closes the channel it happens on)."""
        conn = self.connection
        try:
            async with conn.probe_channel() as channel:
                await channel.queue_bind(queue=self.name, exchange=conn.task_exchange_name, routing_key=self.name)
        except aiormq.exceptions.ChannelAccessRefused:
            LOGGER.debug("may not bind task queue %r: whoever declared it binds it", self.name)

    async def _declare_or_use(
        self, channel: aio_pika.abc.AbstractRobustChannel
    ) -> tuple[aio_pika.abc.AbstractQueue, aio_pika.abc.AbstractRobustChannel, bool]:
        """Declare the queue, or use it as it is: ``(queue, channel, declared by us)``.

        The broker refuses an inequivalent re-declaration (another peer's arguments, another type) with
        ``406 PRECONDITION_FAILED``, and a user without configure permission on the queue (a least-privilege
        client) with ``403 ACCESS_REFUSED``; either closes the channel it happened on, so the attempt is
        made on a probe channel first, and the robust task channel then declares (or passively finds) the
        queue without a refusal.
        """
        conn = self.connection
        spec = _topology.task_queue(self.name, testing_mode=conn.testing_mode, queue_type=self.owner.queue_type)
        kwargs = spec.declare_kwargs()
        try:
            async with conn.probe_channel() as probe:
                await probe.queue_declare(
                    queue=self.name,
                    durable=kwargs["durable"],
                    exclusive=kwargs["exclusive"],
                    auto_delete=kwargs["auto_delete"],
                    arguments=kwargs["arguments"],
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            LOGGER.warning(
                "task queue %r exists with other arguments than ours (%s): using it as it is",
                self.name,
                exc.args[0] if exc.args else exc,
            )
        except aiormq.exceptions.ChannelAccessRefused:
            LOGGER.info("no configure permission on task queue %r: using it as it is", self.name)
        else:  # not aio-pika-robust: the consumer's watchdog declares it again (_watch_consumer)
            return await channel.declare_queue(**kwargs, robust=False), channel, True
        try:  # a refusal closes the channel it happens on: not the task channel, whose acks are pending
            async with conn.probe_channel() as probe:
                await probe.queue_declare(queue=self.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ProcessUnreachable(
                f"task queue {self.name!r} does not exist and this user may not declare it:"
                " start a worker first (it declares the queue)"
            ) from None
        return await channel.declare_queue(self.name, passive=True, robust=False), channel, False

    # -- consuming -------------------------------------------------------------------------------
    async def update_consumer(self) -> None:
        """Consume while there are subscribers; stop when the last one leaves."""
        if self.lost:  # the broker ended our consumer: nothing to cancel or declare now
            if self._watch is not None and not self._watch.done():
                return  # the watchdog consumes again as soon as it can, or forgets it (_watch_consumer)
            self.consumer_tag, self.lost = None, False
        if not self.subscribers and self.consumer_tag is None:
            return
        queue = await self.ensure()
        if self.subscribers and self.consumer_tag is None:
            self.consumer_tag = await _consume(queue, self._on_delivery)
            self.lost = False
            if self._watch is None or self._watch.done():
                self._watch = asyncio.get_running_loop().create_task(self._watch_consumer())
                self.connection.track(self._watch)
        elif not self.subscribers and self.consumer_tag is not None:
            tag, self.consumer_tag = self.consumer_tag, None
            await queue.cancel(tag)

    @property
    def consuming(self) -> bool:
        """True while the broker delivers this queue's tasks to our subscribers."""
        return self.consumer_tag is not None and not self.lost and self.connection.connected

    async def _consumer_alive(self) -> bool:
        queue, tag = self.queue, self.consumer_tag
        if queue is None or tag is None:
            return False  # no consumer: a consume that failed half-way (the watchdog consumes again)
        try:
            channel = await cast(aio_pika.RobustChannel, queue.channel).get_underlay_channel()
        except SETTLE_ERRORS:
            return False
        return tag in cast(aiormq.Channel, channel).consumers

    async def _watch_consumer(self) -> None:
        """Consume again whenever the broker stops delivering this queue's tasks to us, for as long as it takes.

        The broker cancels a consumer (``basic.cancel``) when its queue is deleted or the node holding it
        is lost (https://www.rabbitmq.com/docs/consumer-cancel), and aiormq forgets such a consumer without
        a word (``aiormq.channel.Channel._on_cancel_frame`` only pops it); a channel the broker closes, or
        a reconnection, ends it too (the consumer is not aio-pika-robust: :func:`_consume`). So the
        consumer is looked at every :data:`~process_comms.defaults.CONSUMER_CHECK_INTERVAL` and right
        after a reconnection; once gone, ``consuming`` is False and the queue is declared again (a deleted
        queue comes back with the same arguments, if this user may declare it) and consumed, after
        ``CONSUMER_RETRY_FIRST`` seconds, doubling up to ``CONSUMER_RETRY_MAX``, until it works. Each
        change of state is logged once (lost, why it cannot come back yet, back), never each attempt.
        """
        conn = self.connection
        wake = asyncio.Event()

        def on_reconnected(*_args: object) -> None:
            wake.set()

        connection = conn.robust
        if connection is not None:
            connection.reconnect_callbacks.add(on_reconnected)
        try:
            await self._watch_loop(wake)
        finally:
            if connection is not None:
                connection.reconnect_callbacks.discard(on_reconnected)
            if self.lost:  # no subscriber left (or closing): the next one consumes afresh (update_consumer)
                self.consumer_tag, self.lost = None, False

    async def _watch_loop(self, wake: asyncio.Event) -> None:
        conn = self.connection
        delay = defaults.CONSUMER_CHECK_INTERVAL
        outage = _Outage(self.name)
        reconnected = False
        while self.subscribers and not conn.closed and not self.owner.releasing:
            reconnected = await _wait(wake, delay) or reconnected  # since the last look at the consumer
            if not conn.connected or self.consumer_tag is None:
                continue  # reconnecting (the reconnect callback wakes us) or not consuming on purpose
            if not self.lost:
                if await self._consumer_alive():
                    reconnected = False
                    continue
                self.lost = True
                outage.begin(after_reconnect=reconnected)
                reconnected = False
            try:
                await conn.shielded(self._consume_again())
            except (*SETTLE_ERRORS, ProcessCommsError) as exc:
                delay = outage.failed(exc)
                continue
            if self.consumer_tag is None:
                break  # the last subscriber left meanwhile (_consume_again)
            self.lost = False
            outage.end()
            delay = defaults.CONSUMER_CHECK_INTERVAL

    async def _consume_again(self) -> None:
        """Declare the queue again (it may be gone) and consume it; the lost consumer needs no cancel: the
        broker or the closed channel already ended it."""
        self.queue = None
        queue = await self._declare()
        tag = await _consume(queue, self._on_delivery)
        if not self.subscribers:  # the last subscriber left meanwhile
            await queue.cancel(tag)
            self.consumer_tag = None
            return
        self.consumer_tag = tag

    async def stop_consuming(self) -> None:
        """Cancel our consumer (graceful stop); tasks in progress stay ours until settled."""
        if self.queue is not None and self.consumer_tag is not None:
            tag, self.consumer_tag = self.consumer_tag, None
            try:
                await self.queue.cancel(tag)
            except SETTLE_ERRORS:
                LOGGER.debug("could not cancel the task consumer of %r", self.name, exc_info=True)

    # -- settling --------------------------------------------------------------------------------
    def _on_delivery(self, delivered: aiormq.abc.DeliveredMessage) -> Coroutine[object, None, None] | None:
        """A task delivered (called in the task aiormq makes for each delivery, :func:`_consume`): its settling
        goes on as a task of ours, which a closing channel does not cancel."""
        message = aio_pika.IncomingMessage(delivered, no_ack=False)
        if refused(message, "task"):
            return _reject_malformed(message)  # awaited in aiormq's task
        self.owner.take_on(asyncio.get_running_loop().create_task(self._handle(message)))
        return None

    async def _handle(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        owner = self.owner
        try:
            await settle_task(
                RmqIncoming(message, owner.send_reply),
                message.body,
                list(self.subscribers.values()),
                owner.facade(),
                owner.codec,
                lambda: owner.releasing,
            )
        except asyncio.CancelledError:
            if owner.releasing:
                try:
                    await message.nack(requeue=True)
                except SETTLE_ERRORS:
                    pass
            raise


async def _reject_malformed(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    try:  # settled once: never requeued (it would come back for ever), no reply (nowhere valid)
        await message.reject(requeue=False)
    except SETTLE_ERRORS:
        LOGGER.debug("could not reject a malformed task", exc_info=True)


async def _consume(
    queue: aio_pika.abc.AbstractQueue,
    on_delivery: Callable[[aiormq.abc.DeliveredMessage], Coroutine[object, None, None] | None],
) -> str:
    """Consume ``queue`` with aiormq's consumer beneath aio-pika: aiormq calls ``on_delivery`` in the task it
    makes for each delivery (and awaits what it returns, if anything); aio-pika's consumer would make a second
    task, and ``on_delivery`` makes the :class:`aio_pika.IncomingMessage` that aio-pika would.

    Not aio-pika-robust: on a reconnection aio-pika would declare the queue again before anything else, and a
    refused declaration (its classic queue's node down: ``404 NOT_FOUND``) fails the whole reconnection, every
    route with it (``RobustConnection._on_connected``). The queue's watchdog (:meth:`TaskQueue._watch_consumer`)
    consumes again instead."""
    channel = await queue.channel.get_underlay_channel()
    # aiormq wraps a callback that is not a coroutine function (aiormq/tools.py ``awaitable``)
    callback = cast(aiormq.abc.ConsumerCallback, on_delivery)
    ok = await channel.basic_consume(queue=queue.name, consumer_callback=callback)
    if ok.consumer_tag is None:  # pamqp types it optional; the broker always names it
        raise aiormq.exceptions.InvalidFrameError(ok)
    return ok.consumer_tag


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait ``timeout`` seconds or until ``event`` is set; True (and the event cleared) if it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TIMEOUT_ERRORS:  # asyncio.wait_for's, which before 3.11 is not the builtin
        return False
    event.clear()
    return True


class _Outage:
    """One task queue's time without a consumer: its back-off and its log lines, one per change of state."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.since = 0.0
        self.attempts = 0
        self.delay = defaults.CONSUMER_RETRY_FIRST
        self.said: str | None = None  # the kind of failure last logged
        self.warned = False

    def begin(self, *, after_reconnect: bool) -> None:
        """The consumer is gone: say so (a reconnection ends every consumer: that alone is no news)."""
        self.since, self.attempts, self.delay, self.said = time.monotonic(), 0, defaults.CONSUMER_RETRY_FIRST, None
        self.warned = not after_reconnect
        if after_reconnect:
            LOGGER.debug("reconnected: consuming task queue %r again", self.queue)
            return
        LOGGER.warning(
            "the broker cancelled the task consumer on queue %r (queue deleted, its node lost or its channel"
            " closed): not consuming until it is back; declaring it again and consuming",
            self.queue,
        )

    def failed(self, exc: BaseException) -> float:
        """An attempt failed: the seconds to wait before the next (doubling, at most CONSUMER_RETRY_MAX)."""
        self.attempts += 1
        delay = self.delay
        self.delay = min(self.delay * 2, defaults.CONSUMER_RETRY_MAX)
        kind = type(exc).__name__
        if kind != self.said:
            self.said, self.warned = kind, True
            LOGGER.warning(
                "task queue %r is not available (%s: %s): not consuming; trying again after %g s, then at most"
                " every %g s (this is said again only when the reason changes)",
                self.queue,
                kind,
                exc,
                delay,
                defaults.CONSUMER_RETRY_MAX,
            )
        else:
            LOGGER.debug("task queue %r still not available (%s: %s)", self.queue, kind, exc)
        return delay

    def end(self) -> None:
        """Consuming again: say so, with how long it took (at the level of what was said before)."""
        level = logging.WARNING if self.warned else logging.DEBUG
        LOGGER.log(
            level,
            "consuming task queue %r again after %.1f s (%d failed attempt(s))",
            self.queue,
            time.monotonic() - self.since,
            self.attempts,
        )


# == a task delivery: its settle verbs =================================================================================

ReplySender = Callable[[aio_pika.abc.AbstractIncomingMessage, dict[str, object]], Awaitable[None]]
"""Sends a task's reply (:meth:`TaskQueues.send_reply`)."""


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
