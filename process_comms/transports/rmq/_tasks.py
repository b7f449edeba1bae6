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
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.exceptions

from ... import defaults
from ...errors import ConnectionLost, ProcessUnreachable
from ..base import TaskSubscriber, settle_task
from . import _frames, _topology
from ._errors import SETTLE_ERRORS
from ._incoming import RmqIncoming

if TYPE_CHECKING:
    from .communicator import RmqCommunicator

__all__ = ["DEFAULT_QUEUE", "TaskQueue", "queue_name"]

LOGGER = logging.getLogger(__name__)

#: The name callers give for the installation's default task queue.
DEFAULT_QUEUE = "default"


def queue_name(task_queue: str, queue: str | None) -> str:
    """The broker's name of task queue ``queue`` (None or ``default``: the default task queue itself)."""
    if queue is None or queue == DEFAULT_QUEUE:
        return task_queue
    if not queue or any(ch in queue for ch in "#*") or len(queue.encode()) > 200:
        raise ValueError(f"invalid task queue name {queue!r}: use letters, digits, '-', '_' or '.'")
    return f"{task_queue}.{queue}"


class TaskQueue:
    """One task queue of a communicator: declaration, subscribers, consumer, watchdog, settlement."""

    def __init__(self, comm: RmqCommunicator, name: str, prefetch_count: int) -> None:
        self.comm = comm
        self.name = name
        self.prefetch_count = prefetch_count
        self.subscribers: dict[Any, TaskSubscriber] = {}
        self.queue: aio_pika.abc.AbstractQueue | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
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

    async def _new_channel(self) -> aio_pika.abc.AbstractChannel:
        channel = await self.comm._connection.channel()  # type: ignore[union-attr]
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
        self, channel: aio_pika.abc.AbstractChannel
    ) -> tuple[aio_pika.abc.AbstractQueue, aio_pika.abc.AbstractChannel, bool]:
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
        else:
            return await channel.declare_queue(**kwargs), channel, True
        try:
            return await channel.declare_queue(self.name, passive=True), channel, False
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ProcessUnreachable(
                f"task queue {self.name!r} does not exist and this user may not declare it:"
                " start a worker first (it declares the queue)"
            ) from None

    # -- consuming -------------------------------------------------------------------------------
    async def update_consumer(self) -> None:
        """Consume while there are subscribers; stop when the last one leaves."""
        queue = await self.ensure()
        if self.subscribers and self.consumer_tag is None:
            self.consumer_tag = await queue.consume(self._on_task)
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
            return True  # nothing to watch
        try:
            channel = await cast(aio_pika.RobustChannel, queue.channel).get_underlay_channel()
        except SETTLE_ERRORS:
            return False
        return tag in cast(aiormq.Channel, channel).consumers

    async def _watch_consumer(self) -> None:
        """Consume again after the broker cancels our consumer (``basic.cancel``).

        The broker cancels a consumer when its queue is deleted or the node holding it is lost
        (https://www.rabbitmq.com/docs/consumer-cancel). aiormq forgets such a consumer without a word
        (``aiormq.channel.Channel._on_cancel_frame`` only pops it), so the consumer is checked every
        :data:`~process_comms.defaults.CONSUMER_CHECK_INTERVAL`: when it is gone, log a WARNING,
        re-declare the queue and consume again, backing off up to ``CONSUMER_RETRY_MAX`` seconds.
        """
        comm = self.comm
        delay = defaults.CONSUMER_CHECK_INTERVAL
        misses = 0
        while self.subscribers and not comm._closed and not comm._releasing:
            await asyncio.sleep(delay)
            connection = comm._connection
            if connection is None or not connection.connected.is_set() or self.consumer_tag is None:
                misses = 0
                continue  # reconnecting: aio-pika restores the consumer with the connection
            if await self._consumer_alive():
                delay, misses = defaults.CONSUMER_CHECK_INTERVAL, 0
                continue
            # aio-pika sets ``connected`` before it restores the channels and their consumers
            # (RobustConnection._on_connected): a consumer missing at one look may be on its way back
            misses += 1
            if misses < 2:
                continue
            if not self.lost:
                self.lost = True
                LOGGER.warning(
                    "the broker cancelled the task consumer on queue %r (queue deleted or its node lost): "
                    "declaring it again and consuming",
                    self.name,
                )
            try:
                await comm._shielded(self._consume_again())
            except (*SETTLE_ERRORS, ConnectionLost) as exc:
                delay = min(delay * 2, defaults.CONSUMER_RETRY_MAX)
                LOGGER.warning("could not consume %r again (%s); retrying in %.0f s", self.name, exc, delay)
                continue
            self.lost = False
            delay = defaults.CONSUMER_CHECK_INTERVAL
            LOGGER.warning("consuming task queue %r again", self.name)

    async def _consume_again(self) -> None:
        old_queue, old_tag = self.queue, self.consumer_tag
        if old_queue is not None and old_tag is not None:
            try:  # forget the dead consumer, so that a reconnection does not restore it beside the new one
                await old_queue.cancel(old_tag)
            except SETTLE_ERRORS:
                LOGGER.debug("could not cancel the lost consumer %s", old_tag, exc_info=True)
        self.queue = None
        queue = await self._declare()
        self.consumer_tag = await queue.consume(self._on_task)

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
