"""The few Python 3.11 APIs the library uses, for Python 3.10 too (setup.cfg: ``python_requires``).

On 3.11 and later each name is the standard library's own (or does nothing); on 3.10 it is the smallest
equivalent. Drop a shim, and call the standard library directly, once the oldest supported Python has the API.

- ``timeout(delay)``: :func:`asyncio.timeout`, added in 3.11
  (https://docs.python.org/3/library/asyncio-task.html#asyncio.timeout). Like it, the 3.10 version cancels
  the enclosing task at the deadline and raises the builtin :class:`TimeoutError` from that cancellation.
- ``cancelling(task)``: :meth:`asyncio.Task.cancelling`, added in 3.11
  (https://docs.python.org/3/library/asyncio-task.html#asyncio.Task.cancelling): how many cancellation
  requests of ``task`` are pending, which tells "my caller cancelled me" from "what I awaited was cancelled".
  3.10 does not count them, so there the coroutine functions that ask are decorated with
  ``counts_cancellations``: their task counts the ``cancel()`` calls it gets from then on, and ``timeout``
  counts its own. On 3.11+ that decorator returns the function unchanged.
- ``TIMEOUT_ERRORS``: what an expired :func:`asyncio.wait_for` may raise. Before 3.11,
  :class:`asyncio.TimeoutError` is not the builtin :class:`TimeoutError`
  (https://docs.python.org/3/library/asyncio-exceptions.html#asyncio.TimeoutError, "Changed in version 3.11").
"""

from __future__ import annotations

import asyncio
import functools
import sys
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

__all__ = ["TIMEOUT_ERRORS", "cancelling", "counts_cancellations", "timeout"]

P = ParamSpec("P")
T = TypeVar("T")

TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)

if sys.version_info >= (3, 11):
    from asyncio import timeout

    def cancelling(task: asyncio.Task[object]) -> int:
        """How many cancellation requests of ``task`` are pending (:meth:`asyncio.Task.cancelling`)."""
        return task.cancelling()

    def counts_cancellations(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """``fn`` itself: the interpreter counts every task's cancellations."""
        return fn

else:
    #: Pending cancellation requests of each task that counts them (``counts_cancellations``, ``timeout``).
    _requested: weakref.WeakKeyDictionary[asyncio.Task[object], int] = weakref.WeakKeyDictionary()

    def cancelling(task: asyncio.Task[object]) -> int:
        """How many cancellation requests of ``task`` are pending (counted since ``counts_cancellations``)."""
        return _requested.get(task, 0)

    def _count_cancellations(task: asyncio.Task[object]) -> None:
        """From now on, count each ``task.cancel()`` call that is a request (3.11's ``Task.cancel`` counts the same)."""
        if task in _requested:
            return
        _requested[task] = 0
        ref = weakref.ref(task)  # the wrapper lives on the task: a strong reference would be a cycle
        cancel = type(task).cancel

        def counting_cancel(msg: object = None) -> bool:
            counted = ref()
            if counted is None:
                return False
            if not counted.done():
                _requested[counted] = _requested.get(counted, 0) + 1
            return cancel(counted, msg)

        # an instance attribute wins over the method for every caller (asyncio's own, gather, ours)
        task.cancel = counting_cancel  # type: ignore[method-assign]

    def counts_cancellations(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Make the task that awaits ``fn`` count its cancellations, so ``cancelling()`` inside ``fn`` is exact."""

        @functools.wraps(fn)
        async def counted(*args: P.args, **kwargs: P.kwargs) -> T:
            task = asyncio.current_task()
            if task is not None:
                _count_cancellations(task)
            return await fn(*args, **kwargs)

        return counted

    class _Timeout:
        """``async with timeout(delay)`` for 3.10: cancel the task at the deadline, raise TimeoutError for it."""

        def __init__(self, delay: float | None) -> None:
            self._delay = delay
            self._task: asyncio.Task[object] | None = None
            self._handle: asyncio.TimerHandle | None = None
            self._cancelling = 0
            self._expired = False

        def expired(self) -> bool:
            """Whether the deadline passed (and cancelled the task)."""
            return self._expired

        async def __aenter__(self) -> _Timeout:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("timeout() should be used inside a task")
            _count_cancellations(task)
            self._task = task
            self._cancelling = cancelling(task)
            if self._delay is not None:
                self._handle = asyncio.get_running_loop().call_later(max(self._delay, 0), self._expire)
            return self

        def _expire(self) -> None:
            assert self._task is not None
            self._handle = None
            self._expired = True
            self._task.cancel()  # counted: __aenter__ made the task count

        async def __aexit__(
            self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            if not self._expired:
                return
            assert self._task is not None
            left = max(_requested.get(self._task, 1) - 1, 0)  # Task.uncancel(), as asyncio.timeout does
            _requested[self._task] = left
            # a cancellation from elsewhere as well: that one propagates, as with asyncio.timeout
            if left <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def timeout(delay: float | None) -> _Timeout:
        """An async context manager that fails its block with TimeoutError after ``delay`` seconds (None: never)."""
        return _Timeout(delay)
