"""Task queues on RabbitMQ: the default one and named ones, each declared, consumed and watched on its own.

A communicator sends tasks to any of its installation's task queues and consumes those it has
subscribers for. Each consumed queue has a channel of its own, so its prefetch count is a per-queue
limit on the tasks in progress (a worker's "slots" for that queue). Queue names: the default task queue
is ``task_queue`` (kiwipy's); a named queue ``gpu`` is ``<task_queue>.gpu`` (:func:`queue_name`), so it
stays in the installation's namespace and in the least-privilege patterns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.exceptions

from ... import defaults
from ..._compat import TIMEOUT_ERRORS
from ...errors import ProcessCommsError, ProcessUnreachable
from ...wire.names import DEFAULT_QUEUE, queue_name  # re-exported: their old home
from ..base import TaskSubscriber, settle_task
from . import _frames, _topology
from ._errors import SETTLE_ERRORS
from ._incoming import RmqIncoming

if TYPE_CHECKING:
    from .communicator import RmqCommunicator

__all__ = ["DEFAULT_QUEUE", "TaskQueue", "queue_name"]

LOGGER = logging.getLogger(__name__)


class TaskQueue:
    """One task queue of a communicator: declaration, subscribers, consumer, watchdog, settlement."""

    def __init__(self, comm: RmqCommunicator, name: str, prefetch_count: int) -> None:
        self.comm = comm
        self.name = name
        self.prefetch_count = prefetch_count
        self.subscribers: dict[Any, TaskSubscriber] = {}
        self.queue: aio_pika.abc.AbstractQueue | None = None
        self.channel: aio_pika.abc.AbstractRobustChannel | None = None
        self.consumer_tag: str | None = None
        self.lost = False
        self._watch: asyncio.Task[None] | None = None

    # -- declaring -------------------------------------------------------------------------------
    async def ensure(self) -> aio_pika.abc.AbstractQueue:
        """The declared queue (declared once; again after :meth:`forget`)."""
        if self.queue is None:
            return await self.comm._shielded(self._declare())
        return self.queue

    def forget(self) -> None:
        """Declare the queue again at the next send (it may have been deleted)."""
        if self.consumer_tag is None:  # a consumed queue's watchdog declares it again itself
            self.queue = None

    async def _new_channel(self) -> aio_pika.abc.AbstractRobustChannel:
        channel = cast(aio_pika.abc.AbstractRobustChannel, await self.comm._connection.channel())  # type: ignore[union-attr]
        if self.prefetch_count:
            await channel.set_qos(prefetch_count=self.prefetch_count)
        self.channel = channel
        return channel

    async def _declare(self) -> aio_pika.abc.AbstractQueue:
        comm = self.comm
        async with comm._declare_lock:
            if self.queue is None:
                channel = self.channel
                if channel is None or channel.is_closed:  # one channel, kept: acks of tasks in progress use it
                    channel = await self._new_channel()
                queue, channel, owned = await self._declare_or_use(channel)
                if owned:
                    exchange = await comm._declare_exchange(channel, comm.task_exchange_name)
                    await queue.bind(exchange, routing_key=self.name)
                else:
                    await self._bind_if_allowed()
                self.queue = queue
        assert self.queue is not None
        return self.queue

    async def _bind_if_allowed(self) -> None:
        """Bind a queue we did not declare to the task exchange, if this user may (on a probe channel: a
        refusal closes the channel it happens on)."""
        comm = self.comm
        try:
            async with comm._probe_channel() as channel:
                await channel.queue_bind(queue=self.name, exchange=comm.task_exchange_name, routing_key=self.name)
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
        comm = self.comm
        spec = _topology.task_queue(self.name, testing_mode=comm.testing_mode, queue_type=comm.task_queue_type)
        kwargs = spec.declare_kwargs()
        try:
            async with comm._probe_channel() as probe:
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
            async with comm._probe_channel() as probe:
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
            self.consumer_tag = await _consume(queue, self._on_task)
            self.lost = False
            if self._watch is None or self._watch.done():
                self._watch = asyncio.get_running_loop().create_task(self._watch_consumer())
                self.comm._running.add(self._watch)
                self._watch.add_done_callback(self.comm._running.discard)
        elif not self.subscribers and self.consumer_tag is not None:
            tag, self.consumer_tag = self.consumer_tag, None
            await queue.cancel(tag)

    @property
    def consuming(self) -> bool:
        """True while the broker delivers this queue's tasks to our subscribers."""
        connection = self.comm._connection
        return (
            self.consumer_tag is not None and not self.lost and connection is not None and connection.connected.is_set()
        )

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
        comm = self.comm
        wake = asyncio.Event()

        def on_reconnected(*_args: Any) -> None:
            wake.set()

        connection = comm._connection
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
        comm = self.comm
        delay = defaults.CONSUMER_CHECK_INTERVAL
        outage = _Outage(self.name)
        reconnected = False
        while self.subscribers and not comm._closed and not comm._releasing:
            reconnected = await _wait(wake, delay) or reconnected  # since the last look at the consumer
            connection = comm._connection
            if connection is None or not connection.connected.is_set() or self.consumer_tag is None:
                continue  # reconnecting (the reconnect callback wakes us) or not consuming on purpose
            if not self.lost:
                if await self._consumer_alive():
                    reconnected = False
                    continue
                self.lost = True
                outage.begin(after_reconnect=reconnected)
                reconnected = False
            try:
                await comm._shielded(self._consume_again())
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
        tag = await _consume(queue, self._on_task)
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
    async def _on_task(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if _frames.refused(message, "task"):
            try:  # settled once: never requeued (it would come back for ever), no reply (nowhere valid)
                await message.reject(requeue=False)
            except SETTLE_ERRORS:
                LOGGER.debug("could not reject a malformed task", exc_info=True)
            return
        comm = self.comm
        task = asyncio.get_running_loop().create_task(self._handle(message))
        comm._inflight.add(task)
        task.add_done_callback(comm._inflight.discard)

    async def _handle(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        comm = self.comm
        try:
            await settle_task(
                RmqIncoming(message, comm._send_task_reply),
                message.body,
                list(self.subscribers.values()),
                comm.facade,
                comm.codec,
                lambda: comm._releasing,
            )
        except asyncio.CancelledError:
            if comm._releasing:
                try:
                    await message.nack(requeue=True)
                except SETTLE_ERRORS:
                    pass
            raise


async def _consume(queue: aio_pika.abc.AbstractQueue, callback: Callable[[Any], Awaitable[None]]) -> str:
    """Consume ``queue``; not aio-pika-robust: on a reconnection aio-pika would declare the queue again
    before anything else, and a refused declaration (its classic queue's node down: ``404 NOT_FOUND``)
    fails the whole reconnection, every route with it (``RobustConnection._on_connected``). The
    queue's watchdog (:meth:`TaskQueue._watch_consumer`) consumes again instead."""
    if isinstance(queue, aio_pika.abc.AbstractRobustQueue):
        return str(await queue.consume(callback, robust=False))
    return str(await queue.consume(callback))


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
