"""Pulled tasks for a caller's thread: kiwipy's ``RmqThreadTaskQueue`` iteration over transports/_pulled.py.

The async objects do the work on the communicator's loop; this facade only blocks the caller for each step
(``for task in comm.task_queue(name)``, ``with queue.next_task() as task``) and hands out thread futures.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from ..errors import ProcessCommsError
from ._pulled import Pull, PulledTask, TaskState, iterate_tasks, next_task
from .loop import LoopThread

__all__ = ["ThreadPulledTask", "iterate_blocking", "next_task_blocking"]

#: Seconds a settle step (ack, requeue, reply) may take on the loop before the caller stops waiting.
_STEP_SLACK = 10.0

T = TypeVar("T")


async def _call(fn: Callable[..., T], *args: object) -> T:
    return fn(*args)


class ThreadPulledTask:
    """A :class:`~._pulled.PulledTask` for a caller's thread: ``process()`` gives a thread future."""

    def __init__(self, task: PulledTask, loop_thread: LoopThread) -> None:
        self._task, self._loop_thread = task, loop_thread

    @property
    def body(self) -> Any:
        """The task as the sender gave it."""
        return self._task.body

    @property
    def no_reply(self) -> bool:
        """True if the sender asked for no reply."""
        return self._task.no_reply

    @property
    def state(self) -> TaskState:
        """``pending``, ``processing``, ``finished`` or ``requeued``."""
        return self._task.state

    def process(self) -> concurrent.futures.Future[object]:
        """Take the task on: the future's outcome (set from any thread) settles it; dropped unset, requeued."""
        outcome: concurrent.futures.Future[object] = concurrent.futures.Future()
        self._loop_thread.run_sync(_call, self._task.track, outcome, timeout=_STEP_SLACK)
        return outcome

    def requeue(self) -> None:
        """Hand the task back to its queue; it is there when this returns."""
        self._loop_thread.run_sync(self._task.requeue, timeout=_STEP_SLACK)

    @contextlib.contextmanager
    def processing(self) -> Iterator[concurrent.futures.Future[object]]:
        """``process()`` for a block: an error inside is the outcome (and propagates); unset, requeued."""
        outcome = self.process()
        try:
            yield outcome
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            raise
        finally:
            self._loop_thread.run_sync(self._task.finish_block, outcome, timeout=_STEP_SLACK)


def iterate_blocking(loop_thread: LoopThread, pull_one: Pull, timeout: float) -> Iterator[ThreadPulledTask]:
    """:func:`~._pulled.iterate_tasks` stepped from the caller's thread."""
    tasks: AsyncIterator[PulledTask] = iterate_tasks(pull_one, timeout)
    try:
        while True:
            try:
                task = loop_thread.run_sync(tasks.__anext__, timeout=timeout + _STEP_SLACK)
            except StopAsyncIteration:
                return
            yield ThreadPulledTask(task, loop_thread)
    finally:
        aclose = getattr(tasks, "aclose")  # noqa: B009 - an async generator's; requeues what is left pending
        try:
            loop_thread.run_sync(aclose, timeout=_STEP_SLACK)
        except ProcessCommsError:  # closed meanwhile: the broker requeues what its channel left unsettled
            pass


@contextlib.contextmanager
def next_task_blocking(
    loop_thread: LoopThread, pull_one: Pull, timeout: float, fail: bool = True
) -> Iterator[ThreadPulledTask | None]:
    """:func:`~._pulled.next_task` for a ``with`` block on the caller's thread."""
    block = next_task(pull_one, timeout, fail)
    task = loop_thread.run_sync(block.__aenter__, timeout=timeout + _STEP_SLACK)
    try:
        yield None if task is None else ThreadPulledTask(task, loop_thread)
    finally:
        loop_thread.run_sync(block.__aexit__, None, None, None, timeout=_STEP_SLACK)  # requeues it if pending
