"""Making a thread communicator: :func:`connect` and :func:`connect_async`, and kiwipy's blocking mode.

``url=None`` gives the embedded, broker-free default; ``amqp://``/``amqps://`` (one, several, or one
string with commas) the RabbitMQ back end. ``api="kiwipy"`` gives :class:`KiwipyThreadCommunicator`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from .. import defaults
from ..errors import CommunicatorClosed
from ..errors import TimeoutError as PCTimeoutError
from ..urls import mask_url, split_urls
from ..wire.codec import Codec
from ._kiwipy_keywords import translate
from .base import AsyncCommunicator
from .embedded import EmbeddedCommunicator
from .loop import with_deadline
from .rmq import RmqCommunicator
from .threaded import ThreadCommunicator

__all__ = ["Api", "KiwipyThreadCommunicator", "connect", "connect_async"]

#: The send semantics :func:`connect` gives: ours (non-blocking, flat futures) or kiwipy's.
Api = Literal["process_comms", "kiwipy"]


class KiwipyThreadCommunicator(ThreadCommunicator):
    """kiwipy's blocking semantics (``connect(..., api="kiwipy")``), for code written against kiwipy's
    ``RmqThreadCommunicator`` and for plumpy's own controllers, which await a fixed number of future levels.

    ``rpc_send``/``task_send`` block until the broker has confirmed the request (raising ``UnroutableError``,
    our :class:`ProcessUnreachable`, from the call when nothing takes it) and return a
    ``concurrent.futures.Future`` nested once per ``pending`` reply, as kiwipy's
    (``plumpy.futures.unwrap_kiwi_future`` flattens it); ``task_send(no_reply=True)`` returns None once the
    broker has the task; ``broadcast_send`` blocks and returns True (raising :class:`CommunicatorClosed` on a
    closed communicator). A subscriber here gets a ``pending`` reply only when it returns a future, as in
    kiwipy. Blocking is bounded by ``send_timeout``. Our controllers over it stay flat and non-blocking.
    """

    _call_is_level = False

    def __init__(
        self,
        core_factory: Callable[[], AsyncCommunicator],
        *,
        send_timeout: float = defaults.KIWIPY_SEND_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        #: Seconds a send blocks for the broker's confirmation (kiwipy's ``async_task_timeout``).
        self.send_timeout = send_timeout
        super().__init__(core_factory, **kwargs)

    def _nested(
        self, start: Callable[[AsyncCommunicator, Callable[[], None], Callable[[], None]], Awaitable[object]]
    ) -> Any:
        """Start a send; block until the broker confirmed it (or it failed), then return kiwipy's nested future."""
        outer: concurrent.futures.Future[object] = concurrent.futures.Future()
        level = [outer]

        def on_pending() -> None:  # on the loop, before the final outcome (also on the loop)
            deeper: concurrent.futures.Future[object] = concurrent.futures.Future()
            level[0].set_result(deeper)
            level[0] = deeper

        def settle(done: concurrent.futures.Future[object]) -> None:
            current = level[0]
            if done.cancelled():
                current.cancel()
            elif done.exception() is not None:
                current.set_exception(done.exception())
            else:
                current.set_result(done.result())

        sent: concurrent.futures.Future[object] = concurrent.futures.Future()

        def on_sent() -> None:  # on the loop, once the broker confirmed the request
            if not sent.done():
                sent.set_result(None)

        call = self._send(lambda core: start(core, on_pending, on_sent))
        call.add_done_callback(settle)
        if self._loop_thread.in_loop_thread():  # a subscriber called on the loop must not block it
            return outer
        concurrent.futures.wait([sent, call], self.send_timeout, concurrent.futures.FIRST_COMPLETED)
        if sent.done():
            return outer
        if not call.done():
            raise PCTimeoutError(f"the broker did not confirm the request within {self.send_timeout} s")
        if call.cancelled():
            raise CommunicatorClosed("the communicator was closed before the request was sent")
        error = call.exception()
        if error is not None:
            raise error  # failed before the broker had it: kiwipy raises from the call (UnroutableError ...)
        return outer

    def rpc_send(self, recipient_id: object, msg: object, timeout: float | None = None) -> Any:
        """A kiwipy future of the reply, one level deeper per ``pending`` reply (deadline: ``rpc_timeout``)."""
        self._ensure_open()
        deadline = self.rpc_timeout if timeout is None else timeout
        return self._nested(
            lambda core, pending, sent: with_deadline(
                core.rpc_send(recipient_id, msg, pending, on_sent=sent), deadline, "RPC"
            )
        )

    def task_send(
        self, task: object, no_reply: bool = False, timeout: float | None = None, *, queue: str | None = None
    ) -> Any:
        """A kiwipy future of the task's result (nested per ``pending``); None once queued with ``no_reply``."""
        self._ensure_open()
        deadline = self.task_timeout if timeout is None else timeout
        if no_reply:
            super().task_send(task, True, deadline, queue=queue).result(deadline + 1)
            return None
        return self._nested(
            lambda core, pending, sent: with_deadline(
                core.task_send(task, False, pending, queue=queue, on_sent=sent), deadline, "task"
            )
        )

    def broadcast_send(
        self, body: object, sender: object = None, subject: object = None, correlation_id: object = None
    ) -> Any:
        """Block until the broker has the broadcast; True (kiwipy's return value)."""
        self._ensure_open()
        return super().broadcast_send(body, sender, subject, correlation_id).result(self.rpc_timeout + 1)


def _core_factory(
    url: str | Sequence[str] | None, codec: str | Codec | None, options: dict[str, Any]
) -> Callable[[], AsyncCommunicator]:
    if url is None or url in ("", "embedded://", "memory://"):
        if options:
            raise TypeError(f"options {sorted(options)} only apply to a broker URL")
        return lambda: EmbeddedCommunicator(codec)
    urls = split_urls(url)
    for one in urls:
        if not one.startswith(("amqp://", "amqps://")):
            raise ValueError(
                f"unsupported URL {mask_url(one)!r}: use None for the embedded default, or amqp:// / amqps://"
            )
    return lambda: RmqCommunicator(urls, codec=codec, **options)


def connect(
    url: str | Sequence[str] | None = None,
    *,
    codec: str | Codec | None = None,
    rpc_timeout: float = defaults.RPC_TIMEOUT,
    task_timeout: float = defaults.TASK_TIMEOUT,
    api: Api = "process_comms",
    **options: Any,
) -> ThreadCommunicator:
    """Connect and return a thread-safe communicator; ``url=None`` gives the embedded, broker-free default.

    ``url`` may name several brokers (a list, or one string with commas, e.g. the nodes of a cluster):
    the first that answers is used, and a lost connection moves on to the next in turn.

    ``options`` for RabbitMQ: ``message_exchange``, ``task_exchange``, ``task_queue``,
    ``task_prefetch_count``, ``heartbeat``, ``testing_mode``, ``connect_timeout``, ``ssl_options``,
    ``queue_expires`` (kiwipy's: ms the RPC queue outlives its last consumer).
    ``api="kiwipy"``: kiwipy's blocking send semantics and nested futures (:class:`KiwipyThreadCommunicator`).
    kiwipy's ``RmqThreadCommunicator.connect`` keywords are taken too (``connection_params``, ``encoder`` and
    ``decoder``, ``async_task_timeout``, ...: docs/migrating.md); an unknown keyword is a TypeError.
    Raises :class:`BrokerUnavailable` if the broker cannot be reached or refuses the credentials.
    """
    return _facade(api, url, codec, options, rpc_timeout=rpc_timeout, task_timeout=task_timeout)


def _facade(
    api: Api,
    url: str | Sequence[str] | None,
    codec: str | Codec | None,
    options: dict[str, Any],
    **kwargs: Any,
) -> ThreadCommunicator:
    """The communicator of ``api`` over the core the URL and (kiwipy's or our) keywords name."""
    if api not in ("process_comms", "kiwipy"):
        raise ValueError(f"api must be 'process_comms' or 'kiwipy', not {api!r}")
    ours = translate(url, codec, options)
    factory = _core_factory(ours.url, ours.codec, ours.options)
    if api == "kiwipy":
        if ours.send_timeout is not None:
            kwargs["send_timeout"] = ours.send_timeout
        return KiwipyThreadCommunicator(factory, **kwargs)
    return ThreadCommunicator(factory, **kwargs)  # our sends never block: async_task_timeout bounds nothing


async def connect_async(
    url: str | Sequence[str] | None = None,
    *,
    codec: str | Codec | None = None,
    rpc_timeout: float = defaults.RPC_TIMEOUT,
    task_timeout: float = defaults.TASK_TIMEOUT,
    api: Api = "process_comms",
    **options: Any,
) -> ThreadCommunicator:
    """Like :func:`connect`, but awaits the connection instead of blocking the caller's event loop."""
    comm = _facade(api, url, codec, options, rpc_timeout=rpc_timeout, task_timeout=task_timeout, wait_connected=False)
    try:
        await comm.wait_connected()
    except BaseException:
        comm.close()
        raise
    return comm
