"""The async core communicator: the interface both back ends implement, and the rules they share for what
they receive (dispatch to subscribers, reply waiting, the one task-settlement rule).

An :class:`AsyncCommunicator` lives on one event loop. Sending returns the *final* value of a call
(``pending`` replies are progress, not nested futures) or raises a typed error. Subscribers are
kiwipy-style callables, called on the loop; one that returns a future gets a ``pending`` reply first.

Its parts, in this order:

- subscribers and deliveries: the subscriber types, what a task subscriber may know of its delivery
  (:class:`Delivery`, :data:`CURRENT_DELIVERY`, :class:`HandBack`), a pid's routing form (:func:`routing_id`),
  the ``host`` of a task reply (:func:`host_info`) and an incoming task's settle verbs (:class:`IncomingTask`);
- the interface: :class:`AsyncCommunicator` (its back-end contract in its docstring), with :class:`BrokerBacked`,
  :class:`BroadcastFilter`, :class:`UnknownSubscriber` and :class:`Handovers` (what close() still publishes);
- incoming messages, called by the back ends (embedded.py, rmq/) and the core: :func:`decode`,
  :func:`settle_task`, :class:`ReplyWaiter`, :func:`respond` with :class:`CallbackFuture`,
  :func:`dispatch_task` and :func:`dispatch_broadcast`.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import kiwipy

from .. import defaults
from .._compat import cancelling, counts_cancellations
from .._compat import timeout as _timeout
from ..errors import (
    CommunicatorClosed,
    DecodeError,
    DuplicateSubscriber,
    InvalidPid,
    InvalidTask,
    ProcessCommsError,
    TaskRejected,
)
from ..wire.codec import Codec, get_codec
from ..wire.messages import (
    CANCELLED_KEY,
    ERROR_TYPE_KEY,
    EXCEPTION_KEY,
    HOST_KEY,
    PENDING_KEY,
    RESULT_KEY,
    exception_reply,
    parse_task_envelope,
    reply_outcome,
    wants_pending,
)
from ..wire.types import DEFAULT_QUEUE
from .loop import post

if TYPE_CHECKING:  # _pulled settles pulled tasks with the rules below: its type for pull_task's annotation only
    from ._pulled import PulledTask

__all__ = [
    "AsyncCommunicator",
    "BrokerBacked",
    "Handovers",
    "UnknownSubscriber",
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
    "HandBack",
    "CURRENT_DELIVERY",
    "IncomingTask",
    "InvalidTask",
    "settle_task",
    "decode",
    "RpcSubscriber",
    "TaskSubscriber",
    "BroadcastSubscriber",
    "CallbackFuture",
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


# -- subscribers and deliveries -------------------------------------------------------------------------------

RpcSubscriber = Callable[[Any, Any], Any]
#: A task subscriber: ``(communicator, task)`` -> a value or a future; raise ``kiwipy.TaskRejected`` to refuse.
TaskSubscriber = Callable[[Any, Any], Any]
#: A broadcast subscriber: ``(communicator, body, sender, subject, correlation_id)``; its result is ignored.
BroadcastSubscriber = Callable[[Any, Any, Any, Any, Any], Any]
Subscriber = RpcSubscriber | TaskSubscriber | BroadcastSubscriber
SendReply = Callable[[dict[str, object]], Awaitable[None]]

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
    hold: concurrent.futures.Future[None] | None = None


class HandBack(TaskRejected):
    """Raised by a loop-safe task subscriber (``loop_safe = True``: called on the communicator's loop) that takes
    no more tasks (a worker recycling itself, worker/_recycle.py): unless a later subscriber takes it, the task
    goes back to its queue at once for another consumer, whether it was delivered before or not (a plain
    refusal of a redelivered task is answered instead)."""


#: The delivery of the task being dispatched, readable by task subscribers (e.g. for idempotent launches).
CURRENT_DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("CURRENT_DELIVERY", default=None)


def routing_id(pid: object) -> str:
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


def host_info() -> dict[str, object]:
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

    async def reply(self, reply: dict[str, object]) -> None:
        """Send ``reply`` to the sender, if it asked for replies."""


# -- the interface --------------------------------------------------------------------------------------------


@runtime_checkable
class BrokerBacked(Protocol):
    """A back end on a broker connection: kiwipy's ``RmqCommunicator`` extras (:class:`~.rmq.RmqCommunicator`
    has them; the embedded back end has no broker, so none)."""

    @property
    def server_properties(self) -> dict[str, object]:
        """The properties the broker sent when the connection opened (product, version, capabilities)."""

    @property
    def task_queue_name(self) -> str:
        """The broker name of the default task queue."""

    def add_close_callback(self, callback: Callable[..., object], weak: bool = False) -> None:
        """Call ``callback(connection, exc)`` each time the broker connection closes."""


class UnknownSubscriber(ProcessCommsError, ValueError):
    """No subscriber with this identifier is registered here (kiwipy raises ``ValueError``)."""


class BroadcastFilter(kiwipy.BroadcastFilter):
    """kiwipy's filter (``*`` wildcards on subject and sender), also for non-string senders such as UUIDs.

    A string filter matches ``str(value)``, so ``BroadcastFilter(cb, sender=str(pid))`` sees a UUID sender.
    """

    @classmethod
    def _ensure_filter(cls, filter_value: object) -> Callable[[object], object]:
        check: Callable[[object], object] = super()._ensure_filter(filter_value)
        if isinstance(filter_value, str) or hasattr(filter_value, "match"):
            return lambda value: check(value if isinstance(value, str) else str(value))
        return check


#: How many removed RPC subscribers still answer requests that were routed before their removal.
_RETIRED_RPC_MAX = 1024
#: Seconds a removed RPC subscriber still answers requests routed to it before its unbind: as long as such a
#: request can wait in an RPC queue (its message TTL). After that it is let go, and with it the process it
#: belongs to (a worker used to keep the last 1,024 ended processes, tracebacks and all, for good).
RETIRED_RPC_SECONDS = defaults.RPC_QUEUE_MESSAGE_TTL_MS / 1000

#: Liveness tokens of the open in-process communicators (the embedded back end: one interpreter).
_LIVE_TOKENS: set[str] = set()


class Handovers:
    """Messages that callers handed over and the broker has not confirmed yet; ``close()`` waits for them.

    The rule (RELIABILITY.md, "close right after fire-and-forget sends";
    tests/transports/test_close_hands_over.py): every message handed over before ``close()`` is published and
    confirmed before the connection closes, bounded by :data:`process_comms.defaults.CLOSE_FLUSH_TIMEOUT`; what
    is still unconfirmed then is logged by count and its caller's future fails with :class:`CommunicatorClosed`.
    """

    def __init__(self) -> None:
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Messages handed over and not yet confirmed (or failed)."""
        return self._pending

    @contextlib.contextmanager
    def handed_over(self) -> Iterator[Callable[[], None]]:
        """Count one message for the block; call the yielded function once the broker confirmed it."""
        self._pending += 1
        self._idle.clear()
        counted = True

        def confirmed() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._pending -= 1
                if not self._pending:
                    self._idle.set()

        try:
            yield confirmed
        finally:
            confirmed()

    async def wait(self, timeout: float) -> int:
        """Wait until every message is confirmed, at most ``timeout`` seconds; return how many are not."""
        if self._pending:
            try:
                async with _timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                pass
        return self._pending


class AsyncCommunicator(abc.ABC):
    """A communicator bound to one event loop: RPC, broadcast and task messaging with flat results.

    The back-end contract, all a back end supplies (the subscriber registries, retired routes, calls to
    its own subscribers and the reply rules are here, shared):

    - the three sends, abstract: :meth:`rpc_send`, :meth:`task_send`, :meth:`broadcast_send`;
    - the hooks that make the subscriptions real, each a no-op here: :meth:`_on_rpc_added` and
      :meth:`_on_rpc_removed`, :meth:`_on_task_subscribers_changed` and :meth:`_on_broadcast_subscribers_changed`
      (in-process delivery, :mod:`.embedded`, needs only ``_on_task_subscribers_changed``; an adapter that
      forwards subscriptions elsewhere, ``client/_kiwipy.py``, none);
    - what it receives goes to :meth:`_handle_rpc` and :meth:`_handle_broadcast`, and each task to
      :func:`settle_task`;
    - optionally :meth:`connect`, :meth:`close` (calling this one), :meth:`release_tasks`, :meth:`pull_task`
      and the liveness pair :meth:`liveness_token` / :meth:`is_alive`.
    """

    def __init__(self, codec: str | Codec | None = None) -> None:
        self.codec: Codec = get_codec(codec)
        self._rpc_subscribers: dict[str, RpcSubscriber] = {}
        #: key -> (subscriber, monotonic time it was removed), oldest first
        self._retired_rpc: dict[str, tuple[RpcSubscriber, float]] = {}
        self._retire_timer: asyncio.TimerHandle | None = None
        self._task_subscribers: dict[Hashable, TaskSubscriber] = {}
        self._named_task_subscribers: dict[str, dict[Hashable, TaskSubscriber]] = {}
        self._liveness: str | None = None
        self._broadcast_subscribers: dict[Hashable, BroadcastSubscriber] = {}
        self._closed = False
        #: RPCs in flight to a subscriber of this communicator, by correlation id: each future is done once the
        #: request is handed to the subscriber (its call returned); close() waits for them.
        self._own_calls: dict[str, asyncio.Future[None]] = {}
        #: The object handed to subscribers as their ``communicator`` argument.
        self.facade: object = self

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open connections and declare what this communicator owns (idempotent)."""

    async def close(self) -> None:
        """Close the communicator; idempotent."""
        self._closed = True
        _LIVE_TOKENS.discard(self._liveness or "")
        if self._retire_timer is not None:
            self._retire_timer.cancel()
            self._retire_timer = None
        self._retired_rpc.clear()

    @contextlib.contextmanager
    def _call_to_self(self, key: str) -> Iterator[str]:
        """A correlation id for an RPC to ``key``; tracked while in flight if the subscriber is ours, so that
        close() hands the request over first (:meth:`_hand_over_own_calls`)."""
        correlation_id = str(uuid.uuid4())
        if key in self._rpc_subscribers:
            self._own_calls[correlation_id] = asyncio.get_running_loop().create_future()
        try:
            yield correlation_id
        finally:
            self._handed_over(correlation_id)  # answered or failed: nothing left to hand over
            self._own_calls.pop(correlation_id, None)

    def _handed_over(self, correlation_id: str | None) -> None:
        handed = self._own_calls.get(correlation_id or "")
        if handed is not None and not handed.done():
            handed.set_result(None)

    def _calling(self, correlation_id: str | None, call: Callable[[], object]) -> Callable[[], object]:
        """``call`` (a subscriber's), marking an own request handed over once the subscriber's call returned
        (on a callback thread: once that call is done)."""
        if correlation_id not in self._own_calls:
            return call
        loop = asyncio.get_running_loop()

        def calling() -> object:
            value: object = None
            try:
                value = call()
                return value
            finally:
                if isinstance(value, concurrent.futures.Future):
                    value.add_done_callback(lambda _: post(loop, self._handed_over, correlation_id))
                else:
                    self._handed_over(correlation_id)

        return calling

    async def _hand_over_own_calls(self) -> None:
        """At close: hand the RPCs this communicator sent to its own subscribers over to them first.

        Their requests wait in this communicator (its RPC queue goes with its connection), so closing at once
        would lose them (kiwipy's ``test_context_manager``); bounded by ``CLOSE_FLUSH_TIMEOUT``. Handed over
        is enough: a subscriber that never answers does not hold the close up.
        """
        pending = [fut for fut in self._own_calls.values() if not fut.done()]
        if pending and not self._closed:
            await asyncio.wait(pending, timeout=defaults.CLOSE_FLUSH_TIMEOUT)

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

    @property
    def consuming(self) -> bool:
        """True while task subscribers are registered and tasks are delivered to them (health for supervisors)."""
        return (bool(self._task_subscribers) or any(self._named_task_subscribers.values())) and not self._closed

    def _ensure_open(self) -> None:
        if self._closed:
            raise CommunicatorClosed("the communicator is closed")

    # -- liveness (a worker sees at once that another worker's connection is gone) --------------------
    async def liveness_token(self) -> str:
        """A name that lives exactly as long as this communicator (its connection); see :meth:`is_alive`."""
        token = self._liveness
        if token is None:
            token = f"embedded.worker.{uuid.uuid4().hex}"
            self._liveness = token
            _LIVE_TOKENS.add(token)
        return token

    async def is_alive(self, token: str) -> bool | None:
        """Whether the communicator holding ``token`` is alive: True, False, or None if unknown now."""
        return token in _LIVE_TOKENS

    # -- sending ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def rpc_send(
        self,
        recipient_id: object,
        msg: object,
        on_pending: Callable[[], None] | None = None,
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        """Send an RPC to ``recipient_id``; return the final result (raises ProcessUnreachable if no route).

        ``on_sent`` is called (on the loop) once the request is routed and confirmed, before any reply:
        kiwipy's blocking sends wait for it (transports/connect.py). A back end that cannot tell never calls it.
        """

    @abc.abstractmethod
    async def task_send(
        self,
        task: object,
        no_reply: bool = False,
        on_pending: Callable[[], None] | None = None,
        *,
        queue: str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        """Queue a task (on the named task ``queue``, default the default one); return its final result, or
        None once confirmed when ``no_reply``. ``on_sent``: as for :meth:`rpc_send`, once the queue has it."""

    async def release_tasks(self, suspend: Awaitable[object] | None = None) -> None:
        """Stop taking tasks, await ``suspend`` (checkpoint the work), then hand the tasks in progress back."""

    @abc.abstractmethod
    async def broadcast_send(
        self, body: object, sender: object = None, subject: object = None, correlation_id: object = None
    ) -> bool:
        """Broadcast to every subscriber on every communicator; True once handed to the broker."""

    async def pull_task(self, timeout: float, *, queue: str | None = None) -> PulledTask | None:
        """Take the next task queued on ``queue`` without a subscriber (kiwipy's task-queue iteration:
        transports/_pulled.py); None if the queue has none. ``timeout``: how long the broker may take."""
        raise TypeError(f"{type(self).__name__} cannot hand out queued tasks")

    # -- subscribing -----------------------------------------------------------------------------
    async def add_rpc_subscriber(self, subscriber: RpcSubscriber, identifier: Hashable | None = None) -> str:
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

    async def remove_rpc_subscriber(self, identifier: Hashable) -> None:
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
            self._retired_rpc.pop(key, None)
            self._retired_rpc[key] = (subscriber, time.monotonic())
            while len(self._retired_rpc) > _RETIRED_RPC_MAX:
                self._retired_rpc.pop(next(iter(self._retired_rpc)))
            if self._retire_timer is None:
                self._retire_timer = asyncio.get_running_loop().call_later(RETIRED_RPC_SECONDS, self._let_go_retired)

    def _let_go_retired(self) -> None:
        """Drop the retired RPC subscribers older than :data:`RETIRED_RPC_SECONDS`; again when the next is due."""
        self._retire_timer = None
        cutoff = time.monotonic() - RETIRED_RPC_SECONDS
        while self._retired_rpc:
            key, (_subscriber, since) = next(iter(self._retired_rpc.items()))
            if since > cutoff:
                self._retire_timer = asyncio.get_running_loop().call_later(since - cutoff, self._let_go_retired)
                return
            del self._retired_rpc[key]

    def _subscribers_of(self, queue: str | None) -> dict[Hashable, TaskSubscriber]:
        """The task subscribers of ``queue`` (None or ``"default"``: the default task queue)."""
        if queue is None or queue == DEFAULT_QUEUE:
            return self._task_subscribers
        return self._named_task_subscribers.setdefault(queue, {})

    async def add_task_subscriber(
        self,
        subscriber: TaskSubscriber,
        identifier: Hashable | None = None,
        *,
        queue: str | None = None,
        prefetch_count: int | None = None,
    ) -> Hashable:
        """Receive tasks from the task queue (or the named task ``queue``); returns the identifier.

        ``prefetch_count``: at most this many of the queue's tasks in progress here at once (a worker's
        slots for that queue; 0 is no limit); set by the queue's first subscriber.
        """
        self._ensure_open()
        identifier = identifier if identifier is not None else uuid.uuid4()
        subscribers = self._subscribers_of(queue)
        if identifier in subscribers:
            raise DuplicateSubscriber(f"a task subscriber {identifier!r} already exists")
        first_prefetch = prefetch_count if not subscribers else None  # the queue's first subscriber sets it
        subscribers[identifier] = subscriber
        try:
            await self._on_task_subscribers_changed(queue, first_prefetch)
        except BaseException:
            subscribers.pop(identifier, None)
            raise
        return identifier

    async def remove_task_subscriber(self, identifier: Hashable, *, queue: str | None = None) -> None:
        """Stop receiving tasks through ``identifier``; :class:`UnknownSubscriber` (a ``ValueError``, as
        kiwipy's ``Communicator.remove_task_subscriber`` documents) if it is not subscribed here."""
        if self._subscribers_of(queue).pop(identifier, None) is None:
            if self._closed:
                return  # close() let every subscription go
            raise UnknownSubscriber(f"no task subscriber {identifier!r} on this communicator")
        if not self._closed:
            await self._on_task_subscribers_changed(queue)

    async def add_broadcast_subscriber(
        self, subscriber: BroadcastSubscriber, identifier: Hashable | None = None
    ) -> Hashable:
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

    async def remove_broadcast_subscriber(self, identifier: Hashable) -> None:
        """Stop delivering broadcasts to ``identifier``; no error if unknown."""
        self._broadcast_subscribers.pop(identifier, None)

    # -- the back-end contract: the hooks (see the class docstring) -------------------------------------
    async def _on_rpc_added(self, key: str) -> None:
        """Start routing RPCs addressed to ``key`` (``[rpc].<key>``) here; raise if that cannot be done."""

    async def _on_rpc_removed(self, key: str) -> None:
        """Stop routing ``[rpc].<key>`` here (best effort: a failure is logged, not raised)."""

    async def _on_task_subscribers_changed(self, queue: str | None = None, prefetch_count: int | None = None) -> None:
        """Start or stop consuming the task queue (or the named ``queue``) as it gained or lost subscribers
        (:meth:`_subscribers_of`); ``prefetch_count``, from the queue's first subscriber: at most this many of
        its tasks in progress here (0: no limit; None: the back end's default)."""

    async def _on_broadcast_subscribers_changed(self) -> None:
        """Start receiving broadcasts (once: every broadcast goes to :meth:`_handle_broadcast`)."""

    # -- incoming ----------------------------------------------------------------------------------
    async def _handle_rpc(
        self, key: str, body: bytes, send: SendReply | None, correlation_id: str | None = None
    ) -> None:
        """Decode an RPC, run its subscriber and send the replies (a decode failure is replied, not dropped)."""
        retired = self._retired_rpc.get(key)
        subscriber = self._rpc_subscribers.get(key) or (retired[0] if retired is not None else None)
        try:
            msg = await decode(self.codec, body)
        except DecodeError as exc:
            if send is not None:
                await send(exception_reply(exc))
            return
        if subscriber is None:
            if send is not None:
                await send(exception_reply(LookupError(f"no subscriber for {key!r} on this communicator")))
            return
        reply = await respond(self._calling(correlation_id, lambda: subscriber(self.facade, msg)), send)
        if send is not None:
            await send(reply)

    async def _handle_broadcast(self, body: bytes) -> None:
        try:
            message = await decode(self.codec, body)
        except DecodeError as exc:
            LOGGER.warning("dropped an undecodable broadcast: %s", exc)
            return
        dispatch_broadcast(list(self._broadcast_subscribers.values()), self.facade, message)


# -- incoming messages: decoding, task settlement, replies, dispatch to subscribers ---------------------------

_decoder: concurrent.futures.ThreadPoolExecutor | None = None
_decoder_lock = threading.Lock()


async def decode(codec: Codec, body: bytes) -> Any:
    """``codec.decode(body)``; a body over :data:`~process_comms.defaults.DECODE_INLINE_BYTES` off the I/O loop.

    Large bodies are decoded one at a time on one thread of this process, so the loop keeps answering
    other calls meanwhile and at most one large message is being decoded at once (tests/wire/test_decode_cost.py,
    RELIABILITY.md "Bad input"); small ones, nearly all, are decoded in place (a thread hop costs ~50 µs).
    """
    if len(body) <= defaults.DECODE_INLINE_BYTES:
        return codec.decode(body)
    global _decoder
    with _decoder_lock:
        if _decoder is None:
            _decoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="process-comms-decode")
    return await asyncio.get_running_loop().run_in_executor(_decoder, codec.decode, body)


async def settle_task(
    incoming: IncomingTask,
    body: bytes,
    subscribers: list[TaskSubscriber],
    facade: object,
    codec: Codec,
    releasing: Callable[[], bool],
) -> None:
    """The one task-settlement rule of every back end.

    A malformed task is rejected with an error reply (never requeued to loop forever). A task every
    subscriber refused is requeued once, then replied to with one ``TaskRejected``; one handed back
    (:class:`HandBack`, or no subscriber left) is requeued, however often it was delivered.
    A held task (:class:`Delivery`) is replied to at once and acked only when its hold completes. While
    ``releasing()``, a finished task is handed back instead of acked, so the next worker continues it.
    """
    try:
        task, no_reply = parse_task_envelope(await decode(codec, body))
    except Exception as exc:  # noqa: BLE001 - malformed tasks are settled, never redelivered forever
        LOGGER.warning("refused a malformed task: %s", exc)
        await incoming.reject()
        await incoming.reply(exception_reply(exc))
        return
    delivery = Delivery(incoming.correlation_id, incoming.redelivered)
    CURRENT_DELIVERY.set(delivery)
    no_reply = not incoming.wants_reply(no_reply)
    pending = not no_reply and wants_pending(getattr(incoming, "headers", None))
    try:
        if not subscribers:  # delivered as the last subscriber left (its consumer not yet cancelled)
            raise HandBack("no task subscriber left here")
        reply = await dispatch_task(subscribers, facade, task, incoming.reply if pending else None)
    except HandBack as exc:
        LOGGER.debug("task handed back to its queue: %s", exc)
        await incoming.requeue()  # for another consumer: nothing ran here
        return
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
        self.future: asyncio.Future[object] = loop.create_future()
        self.on_pending = on_pending

    def feed(self, reply: object) -> None:
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


class CallbackFuture(concurrent.futures.Future[object]):
    """The future of a subscriber's own call, run on a callback thread: what it resolves to is what the
    subscriber returned, so awaiting it is no reply level of its own (no ``pending`` reply for it).

    kiwipy calls a subscriber and sends ``pending`` only when *it* returns a future (``src/kiwipy/rmq/
    communicator.py``, ``tasks.py``); kiwipy's mode (transports/connect.py) hands such futures out.
    """


async def _called(value: Any) -> Any:
    """What a subscriber returned: the outcome of a :class:`CallbackFuture`, else ``value`` itself."""
    if isinstance(value, CallbackFuture):
        return await asyncio.wrap_future(value)
    return value


async def _refused(call: CallbackFuture) -> bool:
    """Wait for a subscriber's call on its callback thread; True if it refused the task (``TaskRejected``)."""
    await asyncio.wait([asyncio.wrap_future(call)])
    return not call.cancelled() and isinstance(call.exception(), kiwipy.TaskRejected)


def _is_future(value: object) -> bool:
    return isinstance(value, concurrent.futures.Future) or inspect.isawaitable(value)


async def _await_any(value: Any) -> Any:
    if isinstance(value, concurrent.futures.Future):
        return await asyncio.wrap_future(value)
    return await value


@counts_cancellations  # cancelling() below, on Python 3.10 too
async def respond(value_or_call: object, send: SendReply | None, *, call: bool = True) -> dict[str, object]:
    """Run a handler (or take its value) and return the final reply, sending ``pending`` for each future level.

    A cancelled handler yields a ``cancelled`` reply (kiwipy sends nothing, leaving the caller waiting); a failure
    yields an ``exception`` reply. Only cancellation of the calling task itself propagates.
    """
    try:
        value = await _called(cast(Callable[[], object], value_or_call)() if call else value_or_call)
        while _is_future(value):
            if send is not None:
                await send({PENDING_KEY: None})
            value = await _await_any(value)
        return {RESULT_KEY: value}
    except (asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
        task = asyncio.current_task()
        if task is not None and cancelling(task):
            raise
        return {CANCELLED_KEY: str(exc) or None}
    except Exception as exc:  # noqa: BLE001 - every handler failure becomes a reply
        return exception_reply(exc)


async def dispatch_task(
    subscribers: list[TaskSubscriber], comm: object, task: object, send: SendReply | None
) -> dict[str, object] | None:
    """Offer ``task`` to each subscriber in turn; return the final reply, or None if every one rejected it
    (:class:`HandBack` if one of them handed it back)."""
    handed_back: HandBack | None = None
    for subscriber in subscribers:
        try:
            value = subscriber(comm, task)
        except HandBack as exc:
            handed_back = exc
            continue
        except kiwipy.TaskRejected:
            continue
        except Exception as exc:  # noqa: BLE001
            return exception_reply(exc)
        if isinstance(value, CallbackFuture) and await _refused(value):
            continue  # refused on its callback thread: the next subscriber may take it
        return await respond(value, send, call=False)
    if handed_back is not None:
        raise handed_back
    return None


def dispatch_broadcast(subscribers: list[BroadcastSubscriber], comm: object, message: object) -> None:
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


def _log_failure(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        LOGGER.error("broadcast subscriber failed", exc_info=fut.exception())
