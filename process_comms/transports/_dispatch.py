"""How one delivered message is handled: subscriber dispatch, reply waiting, and the one task-settlement rule.

Both back ends (embedded.py, rmq.py) call these; :mod:`.base` re-exports them with the communicator interface.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import kiwipy

from .. import defaults
from .._compat import cancelling, counts_cancellations
from ..errors import (
    InvalidPid,
    TaskRejected,
)
from ..wire.codec import Codec
from ..wire.messages import (
    CANCELLED_KEY,
    PENDING_KEY,
    RESULT_KEY,
    exception_reply,
    parse_task_envelope,
    reply_outcome,
    wants_pending,
)

LOGGER = logging.getLogger(__name__)


RpcSubscriber = Callable[[Any, Any], Any]
#: A task subscriber: ``(communicator, task)`` -> a value or a future; raise ``kiwipy.TaskRejected`` to refuse.
TaskSubscriber = Callable[[Any, Any], Any]
#: A broadcast subscriber: ``(communicator, body, sender, subject, correlation_id)``; its result is ignored.
BroadcastSubscriber = Callable[[Any, Any, Any, Any, Any], Any]
Subscriber = RpcSubscriber | TaskSubscriber | BroadcastSubscriber
SendReply = Callable[[dict[str, object]], Awaitable[None]]

#: How many removed RPC subscribers still answer requests that were routed before their removal.
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
