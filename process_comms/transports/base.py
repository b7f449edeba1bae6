"""The async core communicator: the interface both back ends implement, and the reply rules they share.

An :class:`AsyncCommunicator` lives on one event loop. Sending returns the *final* value of a call
(``pending`` replies are progress, not nested futures) or raises a typed error. Subscribers are
kiwipy-style callables, called on the loop; one that returns a future gets a ``pending`` reply first.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

import kiwipy

from .. import defaults
from ..errors import (
    CommunicatorClosed,
    DecodeError,
    DuplicateSubscriber,
    InvalidPid,
    InvalidTask,
    TaskRejected,
)
from ..wire.codec import Codec, get_codec
from ..wire.messages import Pid
from ..wire.replies import (
    CANCELLED_KEY,
    ERROR_TYPE_KEY,
    EXCEPTION_KEY,
    HOST_KEY,
    PENDING_KEY,
    RESULT_KEY,
    exception_reply,
    parse_task_envelope,
    reply_outcome,
)

__all__ = [
    "AsyncCommunicator",
    "BroadcastFilter",
    "routing_id",
    "reply_outcome",
    "respond",
    "dispatch_task",
    "dispatch_broadcast",
    "exception_reply",
    "host_info",
    "parse_task_envelope",
    "ReplyWaiter",
    "Delivery",
    "CURRENT_DELIVERY",
    "IncomingTask",
    "InvalidTask",
    "settle_task",
    "RpcSubscriber",
    "TaskSubscriber",
    "BroadcastSubscriber",
]

# names that live in lower layers, re-exported for the modules that import them from here
_REEXPORTED = (
    InvalidTask,
    RESULT_KEY,
    EXCEPTION_KEY,
    CANCELLED_KEY,
    PENDING_KEY,
    HOST_KEY,
    ERROR_TYPE_KEY,
)

LOGGER = logging.getLogger(__name__)


class BroadcastFilter(kiwipy.BroadcastFilter):
    """kiwipy's filter (``*`` wildcards on subject and sender), also for non-string senders such as UUIDs.

    A string filter matches ``str(value)``, so ``BroadcastFilter(cb, sender=str(pid))`` sees a UUID sender.
    """

    @classmethod
    def _ensure_filter(cls, filter_value: Any) -> Callable[[Any], Any]:
        check: Callable[[Any], Any] = super()._ensure_filter(filter_value)
        if isinstance(filter_value, str) or hasattr(filter_value, "match"):
            return lambda value: check(value if isinstance(value, str) else str(value))
        return check


#: An RPC subscriber: ``(communicator, msg)`` -> a value, or a future of one.
RpcSubscriber = Callable[[Any, Any], Any]
#: A task subscriber: ``(communicator, task)`` -> a value or a future; raise ``kiwipy.TaskRejected`` to refuse.
TaskSubscriber = Callable[[Any, Any], Any]
#: A broadcast subscriber: ``(communicator, body, sender, subject, correlation_id)``; its result is ignored.
BroadcastSubscriber = Callable[[Any, Any, Any, Any, Any], Any]
Subscriber = RpcSubscriber | TaskSubscriber | BroadcastSubscriber
SendReply = Callable[[dict[str, Any]], Awaitable[None]]

#: How many removed RPC subscribers still answer requests that were routed before their removal.
_RETIRED_RPC_MAX = 1024

#: The one text of the reply to a task that every subscriber refused, on its second delivery.
TASK_REFUSED_TEXT = "every task subscriber rejected the task"


@dataclasses.dataclass
class Delivery:
    """What a task subscriber may know about the delivery it handles (set while it is called).

    A subscriber may set ``hold`` to a future: the reply is sent at once, but the task stays unacked
    until ``hold`` completes, so the broker redelivers it if the worker dies before (a nowait launch of
    a persisted process survives its worker this way).
    """

    correlation_id: str | None
    redelivered: bool
    hold: concurrent.futures.Future[Any] | None = None


#: The delivery of the task being dispatched, readable by task subscribers (e.g. for idempotent launches).
CURRENT_DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("CURRENT_DELIVERY", default=None)


def routing_id(pid: Pid) -> str:
    """The routing form of a pid, ``str(pid)``; refuses pids that would be wildcards or too long."""
    if pid is None:
        raise InvalidPid("a pid is required, got None")
    key = str(pid)
    if not key or "*" in key or "#" in key:
        raise InvalidPid(f"pid {key!r} cannot be a routing address: it is empty or contains '*' or '#'")
    if len(key.encode()) + len(defaults.RPC_PREFIX) + 1 > defaults.MAX_ROUTING_KEY_BYTES:
        raise InvalidPid(f"pid {key[:40]!r}... is longer than a routing key allows")
    return key


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


def host_info() -> dict[str, Any]:
    """The ``host`` entry kiwipy puts in task replies: who handled the task (host name looked up once)."""
    return {"hostname": _hostname(), "pid": os.getpid()}


class IncomingTask(Protocol):
    """One delivered task with its own settle verbs; each back end adapts its delivery to this."""

    @property
    def redelivered(self) -> bool:
        """True if this task was delivered before (and handed back)."""

    @property
    def correlation_id(self) -> str | None:
        """The sender's correlation id (a persisted launch derives its pid from it)."""

    async def ack(self) -> bool:
        """Settle the task as done; False if it could not be (it will be delivered again)."""

    async def requeue(self) -> None:
        """Hand the task back to the queue, marked redelivered."""

    async def reject(self) -> None:
        """Drop the task for good (no requeue)."""

    def wants_reply(self, no_reply: bool) -> bool:
        """Whether the sender waits for replies, given the envelope's ``no_reply`` flag."""

    async def reply(self, reply: dict[str, Any]) -> None:
        """Send ``reply`` to the sender, if it asked for replies."""


async def settle_task(
    incoming: IncomingTask,
    body: bytes,
    subscribers: list[TaskSubscriber],
    facade: Any,
    codec: Codec,
    releasing: Callable[[], bool],
) -> None:
    """The one task-settlement rule of every back end.

    A malformed task is rejected with an error reply (never requeued to loop forever). A task every
    subscriber refused is requeued once, then replied to with one ``TaskRejected``.
    A held task (:class:`Delivery`) is replied to at once and acked only when its hold completes. While
    ``releasing()``, a finished task is handed back instead of acked, so the next worker continues it.
    """
    try:
        task, no_reply = parse_task_envelope(codec.decode(body))
    except Exception as exc:  # noqa: BLE001 - malformed tasks are settled, never redelivered forever
        LOGGER.warning("refused a malformed task: %s", exc)
        await incoming.reject()
        await incoming.reply(exception_reply(exc))
        return
    delivery = Delivery(incoming.correlation_id, incoming.redelivered)
    CURRENT_DELIVERY.set(delivery)
    no_reply = not incoming.wants_reply(no_reply)
    reply = await dispatch_task(subscribers, facade, task, None if no_reply else incoming.reply)
    if delivery.hold is not None and reply is not None and not releasing():
        if not no_reply:
            await incoming.reply(reply)  # the caller has its answer now; the task stays ours until the work ends
        reply, no_reply = None, True
        await asyncio.wrap_future(delivery.hold)
        if not releasing():
            await incoming.ack()
            return
    if releasing():  # handed back: the next worker continues from the checkpoint
        await incoming.requeue()
        return
    if reply is None:
        if not incoming.redelivered:
            await incoming.requeue()
            return
        reply = exception_reply(TaskRejected(TASK_REFUSED_TEXT))
    if await incoming.ack() and not no_reply:
        await incoming.reply(reply)


class ReplyWaiter:
    """Collects the replies to one request: ``pending`` ones are progress, the first final one settles it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_pending: Callable[[], None] | None = None) -> None:
        self.future: asyncio.Future[Any] = loop.create_future()
        self.on_pending = on_pending

    def feed(self, reply: Any) -> None:
        """Take one decoded reply (or the error that decoding it raised)."""
        if self.future.done():
            return
        try:
            if isinstance(reply, BaseException):
                raise reply
            final, value = reply_outcome(reply)
        except Exception as exc:  # noqa: BLE001 - typed errors travel through the future
            self.future.set_exception(exc)
            return
        if final:
            self.future.set_result(value)
        elif self.on_pending is not None:
            self.on_pending()

    def fail(self, error: BaseException) -> None:
        """Settle with ``error`` unless already settled."""
        if not self.future.done():
            self.future.set_exception(error)


def _is_future(value: Any) -> bool:
    return isinstance(value, concurrent.futures.Future) or inspect.isawaitable(value)


async def _await_any(value: Any) -> Any:
    if isinstance(value, concurrent.futures.Future):
        return await asyncio.wrap_future(value)
    return await value


async def respond(value_or_call: Any, send: SendReply | None, *, call: bool = True) -> dict[str, Any]:
    """Run a handler (or take its value) and return the final reply, sending ``pending`` for each future level.

    A cancelled handler yields a ``cancelled`` reply (kiwipy sends nothing, leaving the caller waiting); a failure
    yields an ``exception`` reply. Only cancellation of the calling task itself propagates.
    """
    try:
        value = value_or_call() if call else value_or_call
        while _is_future(value):
            if send is not None:
                await send({PENDING_KEY: None})
            value = await _await_any(value)
        return {RESULT_KEY: value}
    except (asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return {CANCELLED_KEY: str(exc) or None}
    except Exception as exc:  # noqa: BLE001 - every handler failure becomes a reply
        return exception_reply(exc)


async def dispatch_task(
    subscribers: list[TaskSubscriber], comm: Any, task: Any, send: SendReply | None
) -> dict[str, Any] | None:
    """Offer ``task`` to each subscriber in turn; return the final reply, or None if every one rejected it."""
    for subscriber in subscribers:
        try:
            value = subscriber(comm, task)
        except kiwipy.TaskRejected:
            continue
        except Exception as exc:  # noqa: BLE001
            return exception_reply(exc)
        return await respond(value, send, call=False)
    return None


def dispatch_broadcast(subscribers: list[BroadcastSubscriber], comm: Any, message: Any) -> None:
    """Hand a broadcast envelope to every subscriber; failures are logged, never raised (no replies)."""
    if not isinstance(message, dict):
        LOGGER.warning("dropped a broadcast whose body is not a mapping: %s", type(message).__name__)
        return
    args = (message.get("body"), message.get("sender"), message.get("subject"), message.get("correlation_id"))
    for subscriber in subscribers:
        try:
            result = subscriber(comm, *args)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result).add_done_callback(_log_failure)
        except Exception:
            LOGGER.exception("broadcast subscriber %r failed", subscriber)


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        LOGGER.error("broadcast subscriber failed", exc_info=fut.exception())


class AsyncCommunicator(abc.ABC):
    """A communicator bound to one event loop: RPC, broadcast and task messaging with flat results."""

    def __init__(self, codec: str | Codec | None = None) -> None:
        self.codec: Codec = get_codec(codec)
        self._rpc_subscribers: dict[str, RpcSubscriber] = {}
        self._retired_rpc: dict[str, RpcSubscriber] = {}
        self._task_subscribers: dict[Any, TaskSubscriber] = {}
        self._broadcast_subscribers: dict[Any, BroadcastSubscriber] = {}
        self._closed = False
        #: The object handed to subscribers as their ``communicator`` argument.
        self.facade: Any = self

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open connections and declare what this communicator owns (idempotent)."""

    async def close(self) -> None:
        """Close the communicator; idempotent."""
        self._closed = True

    async def __aenter__(self) -> AsyncCommunicator:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def is_closed(self) -> bool:
        """True once close() has been called."""
        return self._closed

    def _ensure_open(self) -> None:
        if self._closed:
            raise CommunicatorClosed("the communicator is closed")

    # -- sending ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def rpc_send(self, recipient_id: Any, msg: Any, on_pending: Callable[[], None] | None = None) -> Any:
        """Send an RPC to ``recipient_id``; return the final result (raises ProcessUnreachable if no route)."""

    @abc.abstractmethod
    async def task_send(self, task: Any, no_reply: bool = False, on_pending: Callable[[], None] | None = None) -> Any:
        """Queue a task; return its final result, or None once confirmed when ``no_reply``."""

    async def release_tasks(self, suspend: Awaitable[Any] | None = None) -> None:
        """Stop taking tasks, await ``suspend`` (checkpoint the work), then hand the tasks in progress back."""

    @abc.abstractmethod
    async def broadcast_send(
        self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None
    ) -> bool:
        """Broadcast to every subscriber on every communicator; True once handed to the broker."""

    # -- subscribing -----------------------------------------------------------------------------
    async def add_rpc_subscriber(self, subscriber: RpcSubscriber, identifier: Any = None) -> str:
        """Receive RPCs addressed to ``identifier`` (a new UUID if None); returns the identifier."""
        self._ensure_open()
        key = routing_id(identifier if identifier is not None else uuid.uuid4())
        if key in self._rpc_subscribers:
            raise DuplicateSubscriber(f"an RPC subscriber for {key!r} already exists on this communicator")
        self._retired_rpc.pop(key, None)
        self._rpc_subscribers[key] = subscriber
        try:
            await self._on_rpc_added(key)
        except BaseException:
            self._rpc_subscribers.pop(key, None)
            raise
        return key

    async def remove_rpc_subscriber(self, identifier: Any) -> None:
        """Stop receiving RPCs for ``identifier``; no error if it is not subscribed."""
        key = str(identifier)
        subscriber = self._rpc_subscribers.get(key)
        if subscriber is None:
            return
        try:
            if not self._closed:
                await self._on_rpc_removed(key)  # unroutable first, so no request finds the route but not us
        finally:
            self._rpc_subscribers.pop(key, None)
            # requests already routed to us before the unbind still get an answer from the subscriber
            self._retired_rpc[key] = subscriber
            while len(self._retired_rpc) > _RETIRED_RPC_MAX:
                self._retired_rpc.pop(next(iter(self._retired_rpc)))

    async def add_task_subscriber(self, subscriber: TaskSubscriber, identifier: Any = None) -> Any:
        """Receive tasks from the task queue; returns the identifier."""
        self._ensure_open()
        identifier = identifier if identifier is not None else uuid.uuid4()
        if identifier in self._task_subscribers:
            raise DuplicateSubscriber(f"a task subscriber {identifier!r} already exists")
        self._task_subscribers[identifier] = subscriber
        try:
            await self._on_task_subscribers_changed()
        except BaseException:
            self._task_subscribers.pop(identifier, None)
            raise
        return identifier

    async def remove_task_subscriber(self, identifier: Any) -> None:
        """Stop receiving tasks through ``identifier``; no error if unknown."""
        if self._task_subscribers.pop(identifier, None) is not None and not self._closed:
            await self._on_task_subscribers_changed()

    async def add_broadcast_subscriber(self, subscriber: BroadcastSubscriber, identifier: Any = None) -> Any:
        """Receive every broadcast (filter with :class:`BroadcastFilter`); returns the identifier."""
        self._ensure_open()
        identifier = identifier if identifier is not None else uuid.uuid4()
        if identifier in self._broadcast_subscribers:
            raise DuplicateSubscriber(f"a broadcast subscriber {identifier!r} already exists")
        self._broadcast_subscribers[identifier] = subscriber
        try:
            await self._on_broadcast_subscribers_changed()
        except BaseException:
            self._broadcast_subscribers.pop(identifier, None)
            raise
        return identifier

    async def remove_broadcast_subscriber(self, identifier: Any) -> None:
        """Stop delivering broadcasts to ``identifier``; no error if unknown."""
        self._broadcast_subscribers.pop(identifier, None)

    # -- back-end hooks ----------------------------------------------------------------------------
    async def _on_rpc_added(self, key: str) -> None:
        """Start routing ``[rpc].<key>`` here."""

    async def _on_rpc_removed(self, key: str) -> None:
        """Stop routing ``[rpc].<key>`` here."""

    async def _on_task_subscribers_changed(self) -> None:
        """Start or stop consuming the task queue."""

    async def _on_broadcast_subscribers_changed(self) -> None:
        """Start consuming broadcasts."""

    # -- incoming ----------------------------------------------------------------------------------
    async def _handle_rpc(self, key: str, body: bytes, send: SendReply | None) -> None:
        """Decode an RPC, run its subscriber and send the replies (a decode failure is replied, not dropped)."""
        subscriber = self._rpc_subscribers.get(key) or self._retired_rpc.get(key)
        try:
            msg = self.codec.decode(body)
        except DecodeError as exc:
            if send is not None:
                await send(exception_reply(exc))
            return
        if subscriber is None:
            if send is not None:
                await send(exception_reply(LookupError(f"no subscriber for {key!r} on this communicator")))
            return
        reply = await respond(lambda: subscriber(self.facade, msg), send)
        if send is not None:
            await send(reply)

    def _handle_broadcast(self, body: bytes) -> None:
        try:
            message = self.codec.decode(body)
        except DecodeError as exc:
            LOGGER.warning("dropped an undecodable broadcast: %s", exc)
            return
        dispatch_broadcast(list(self._broadcast_subscribers.values()), self.facade, message)
