"""The async core communicator: the interface both back ends implement, and the reply rules they share.

An :class:`AsyncCommunicator` lives on one event loop. Sending returns the *final* value of a call
(``pending`` replies are progress, not nested futures) or raises a typed error. Subscribers are
kiwipy-style callables, called on the loop; one that returns a future gets a ``pending`` reply first.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterator
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import kiwipy

from .. import defaults
from .._compat import timeout as _timeout
from ..errors import (
    CommunicatorClosed,
    DecodeError,
    DuplicateSubscriber,
    InvalidTask,
    ProcessCommsError,
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
)
from ..wire.types import DEFAULT_QUEUE
from ._dispatch import (
    CURRENT_DELIVERY,
    BroadcastSubscriber,
    CallbackFuture,
    Delivery,
    HandBack,
    IncomingTask,
    ReplyWaiter,
    RpcSubscriber,
    SendReply,
    TaskSubscriber,
    decode,
    dispatch_broadcast,
    dispatch_task,
    host_info,
    respond,
    routing_id,
    settle_task,
)
from ._pulled import PulledTask
from .loop import post

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
      :func:`~._dispatch.settle_task`;
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
