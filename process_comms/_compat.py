"""The few Python 3.11 APIs the library uses, for Python 3.10 too (setup.cfg: ``python_requires``).

On 3.11 and later each name is the standard library's own; on 3.10 it is the smallest equivalent. Drop a
shim, and call the standard library directly, once the oldest supported Python has the API.

- ``timeout(delay)``: :func:`asyncio.timeout`, added in 3.11
  (https://docs.python.org/3/library/asyncio-task.html#asyncio.timeout). Like it, the 3.10 version cancels
  the enclosing task at the deadline and raises the builtin :class:`TimeoutError` from that cancellation.
- ``cancelling(task)``: :meth:`asyncio.Task.cancelling`, added in 3.11
  (https://docs.python.org/3/library/asyncio-task.html#asyncio.Task.cancelling): the number of cancellation
  requests of ``task`` still pending, which tells "my caller cancelled me" from "what I awaited was
  cancelled". 3.10 does not count cancellations, so there it counts only those that ``timeout`` made;
  a cancellation from elsewhere that arrives while a handler's future is awaited reads as the handler's own.
- ``TIMEOUT_ERRORS``: what an expired :func:`asyncio.wait_for` may raise. Before 3.11,
  :class:`asyncio.TimeoutError` is not the builtin :class:`TimeoutError`
  (https://docs.python.org/3/library/asyncio-exceptions.html#asyncio.TimeoutError, "Changed in version 3.11").
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from types import TracebackType
from typing import Any

__all__ = ["TIMEOUT_ERRORS", "cancelling", "timeout"]

TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)

if sys.version_info >= (3, 11):
    from asyncio import timeout

    def cancelling(task: asyncio.Task[Any]) -> int:
        """How many cancellation requests of ``task`` are pending (:meth:`asyncio.Task.cancelling`)."""
        return task.cancelling()

else:
    #: Cancellations that ``timeout`` requested and has not yet turned into a TimeoutError, per task.
    _deadline_cancels: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()

    def cancelling(task: asyncio.Task[Any]) -> int:
        """How many cancellations of ``task`` that ``timeout`` requested are pending (3.10 counts no others)."""
        return _deadline_cancels.get(task, 0)

    class _Timeout:
        """``async with timeout(delay)`` for 3.10: cancel the task at the deadline, raise TimeoutError for it."""

        def __init__(self, delay: float | None) -> None:
            self._delay = delay
            self._task: asyncio.Task[Any] | None = None
            self._handle: asyncio.TimerHandle | None = None
            self._expired = False

        def expired(self) -> bool:
            """Whether the deadline passed (and cancelled the task)."""
            return self._expired

        async def __aenter__(self) -> _Timeout:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("timeout() should be used inside a task")
            self._task = task
            if self._delay is not None:
                self._handle = asyncio.get_running_loop().call_later(max(self._delay, 0), self._expire)
            return self

        def _expire(self) -> None:
            assert self._task is not None
            self._handle = None
            self._expired = True
            _deadline_cancels[self._task] = _deadline_cancels.get(self._task, 0) + 1
            self._task.cancel()

        async def __aexit__(
            self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            if not self._expired:
                return
            assert self._task is not None
            left = _deadline_cancels.pop(self._task, 1) - 1
            if left:
                _deadline_cancels[self._task] = left
            if exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def timeout(delay: float | None) -> _Timeout:
        """An async context manager that fails its block with TimeoutError after ``delay`` seconds (None: never)."""
        return _Timeout(delay)
