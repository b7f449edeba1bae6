"""Tasks pulled from a task queue one at a time: kiwipy's task-queue iteration, on any back end.

AiiDA's ``verdi process repair`` and ``verdi devel rabbitmq tasks list/analyze`` walk the launch queue with
``for task in communicator.task_queue(name)`` and settle some tasks by hand. kiwipy's semantics
(``src/kiwipy/rmq/tasks.py``, ``RmqIncomingTask``), kept here:

- a pulled task is ``pending``: ``body`` and ``no_reply`` can be read, nothing is settled yet;
- ``process()`` returns a future (``processing``): its result (or exception) is the task's outcome, acked
  and replied to the sender when it is set (``finished``); a cancelled future hands the task back to
  ``pending``; a future dropped unresolved (garbage collected) requeues the task (the "forget" case);
- ``requeue()`` hands it back to the queue (``requeued``);
- ``processing()`` is ``process()`` as a context manager: an error inside sets it as the outcome (and
  propagates), an outcome left unset at the end requeues the task;
- a task still ``pending`` when its ``next_task()`` block (or the iteration) ends is requeued.

A back end supplies the pull (:meth:`~.base.AsyncCommunicator.pull_task`); the settlement here is the
same for all of them, and the thread facade drives the same objects from the caller's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from .._compat import timeout as _timeout
from ..errors import QueueEmpty
from ..errors import TimeoutError as PCTimeoutError
from ..wire.codec import Codec
from ..wire.messages import exception_reply, parse_task_envelope
from .base import IncomingTask, decode, respond
from .loop import post

__all__ = ["PulledTask", "TaskState", "iterate_tasks", "next_task", "pull", "take"]

LOGGER = logging.getLogger(__name__)

#: kiwipy's task states (``TASK_PENDING`` ... in ``src/kiwipy/rmq/tasks.py``).
TaskState = Literal["pending", "processing", "finished", "requeued"]

#: What a back end's pull gives: the next task, or None when the queue is empty.
Pull = Callable[[float], Awaitable["PulledTask | None"]]


class PulledTask:
    """One task taken from a queue with its settlement pending; see the module docstring for the states."""

    def __init__(self, incoming: IncomingTask, body: Any, no_reply: bool) -> None:
        self._incoming = incoming
        self._body = body
        self._no_reply = no_reply
        self._state: TaskState = "pending"
        self._loop = asyncio.get_running_loop()
        self._outcome_ref: weakref.ref[asyncio.Future[object] | concurrent.futures.Future[object]] | None = None
        self._running: set[asyncio.Task[object]] = set()

    @property
    def body(self) -> Any:
        """The task as the sender gave it."""
        return self._body

    @property
    def no_reply(self) -> bool:
        """True if the sender asked for no reply."""
        return self._no_reply

    @property
    def state(self) -> TaskState:
        """``pending``, ``processing``, ``finished`` or ``requeued``."""
        return self._state

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop that settles this task (the communicator's)."""
        return self._loop

    def _begin(self) -> None:
        if self._state != "pending":
            raise asyncio.InvalidStateError(f"the task is {self._state}")
        self._state = "processing"

    def process(self) -> asyncio.Future[object]:
        """Take the task on (on the loop): the returned future's outcome settles it when set."""
        outcome: asyncio.Future[object] = self._loop.create_future()
        self.track(outcome)
        return outcome

    def track(self, outcome: asyncio.Future[object] | concurrent.futures.Future[object]) -> None:
        """Take the task on with ``outcome`` (a future of any thread): settled when it completes, requeued
        if it is garbage collected unresolved."""
        self._begin()
        outcome.add_done_callback(self._on_outcome)
        self._outcome_ref = weakref.ref(outcome, self._on_outcome_lost)

    def _on_outcome(self, outcome: asyncio.Future[object] | concurrent.futures.Future[object]) -> None:
        self._outcome_ref = None  # settled: its collection is no longer a loss
        post(self._loop, self._spawn, self.settle, outcome)

    def _on_outcome_lost(self, ref: weakref.ref[asyncio.Future[object] | concurrent.futures.Future[object]]) -> None:
        if ref is self._outcome_ref and self._state == "processing":
            self._outcome_ref = None
            LOGGER.warning("a pulled task's outcome was dropped unresolved: the task goes back to its queue")
            post(self._loop, self._spawn, self.requeue)

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        task = self._loop.create_task(_logged(fn(*args)))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def settle(self, outcome: asyncio.Future[object] | concurrent.futures.Future[object]) -> None:
        """Settle with a done ``outcome`` (on the loop): ack and reply, or back to pending if cancelled."""
        self._outcome_ref = None
        if self._state != "processing":
            return
        if outcome.cancelled():
            self._state = "pending"  # whoever took the task decided not to process it
            return
        self._state = "finished"
        wants_reply = self._incoming.wants_reply(self._no_reply)
        try:
            value = outcome.result()  # the outcome itself is no level of its own: no ``pending`` for it
        except Exception as exc:  # noqa: BLE001 - the processing failed: that is the reply
            reply = exception_reply(exc)
        else:
            reply = await respond(value, self._incoming.reply if wants_reply else None, call=False)
        if await self._incoming.ack() and wants_reply:
            await self._incoming.reply(reply)

    async def requeue(self) -> None:
        """Hand the task back to its queue (on the loop)."""
        if self._state not in ("pending", "processing"):
            raise asyncio.InvalidStateError(f"the task is {self._state}")
        self._state = "requeued"
        self._outcome_ref = None
        await self._incoming.requeue()

    @contextlib.asynccontextmanager
    async def processing(self) -> AsyncIterator[asyncio.Future[object]]:
        """``process()`` for a block: an error inside is the outcome (and propagates); unset, requeued."""
        outcome = self.process()
        try:
            yield outcome
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            raise
        finally:
            await self.finish_block(outcome)

    async def finish_block(self, outcome: asyncio.Future[object] | concurrent.futures.Future[object]) -> None:
        """The end of a ``processing()`` block: settle a done outcome now, requeue an unset one."""
        self._outcome_ref = None
        if outcome.done():
            await self.settle(outcome)
        elif self._state == "processing":
            await self.requeue()

    async def release(self) -> None:
        """The end of a ``next_task()`` block or an iteration: a task still pending goes back to the queue."""
        if self._state == "pending":
            await self.requeue()


async def take(incoming: IncomingTask, body: bytes, codec: Codec) -> PulledTask | None:
    """A pulled delivery as a :class:`PulledTask`; a malformed one is rejected with an error reply (None),
    as :func:`~.base.settle_task` does for a delivered one."""
    try:
        task, no_reply = parse_task_envelope(await decode(codec, body))
    except Exception as exc:  # noqa: BLE001 - malformed tasks are settled, never handed out forever
        LOGGER.warning("refused a malformed task: %s", exc)
        await incoming.reject()
        await incoming.reply(exception_reply(exc))
        return None
    return PulledTask(incoming, task, no_reply)


async def _logged(aw: Awaitable[object]) -> None:
    try:
        await aw
    except Exception:
        LOGGER.exception("settling a pulled task failed (unacked, the broker hands it out again)")


async def pull(pull_one: Pull, timeout: float, fail: bool = True) -> PulledTask | None:
    """The next task from ``pull_one`` within ``timeout`` s; :class:`QueueEmpty` (None unless ``fail``) if none."""
    try:
        async with _timeout(timeout + 1):  # the back end bounds its own wait by ``timeout``
            task = await pull_one(timeout)
    except TimeoutError as exc:
        if isinstance(exc, PCTimeoutError):
            raise
        raise PCTimeoutError(f"the broker did not hand out a task within {timeout} s") from None
    if task is None and fail:
        raise QueueEmpty("the task queue has no task to hand out")
    return task


@contextlib.asynccontextmanager
async def next_task(pull_one: Pull, timeout: float, fail: bool = True) -> AsyncIterator[PulledTask | None]:
    """The next task for a block (kiwipy's ``next_task``): requeued at the end unless it was taken on."""
    await asyncio.sleep(0)  # let requeues scheduled just before run first, as kiwipy does
    task = await pull(pull_one, timeout, fail)
    try:
        yield task
    finally:
        if task is not None:
            await task.release()


async def iterate_tasks(pull_one: Pull, timeout: float) -> AsyncIterator[PulledTask]:
    """Every task queued now, one at a time; those left pending are requeued when the iteration ends."""
    taken: list[PulledTask] = []
    try:
        while True:
            task = await pull(pull_one, timeout, fail=False)
            if task is None:
                return
            taken.append(task)
            yield task
    finally:
        for task in taken:
            await task.release()
