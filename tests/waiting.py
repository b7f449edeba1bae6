"""The one bounded wait of the tests: poll a condition until it holds, fail the test at a deadline.

Every wait in the tests has a deadline (CONTRIBUTING.md, "Habits"), and none sleeps to synchronise: the
pause between two polls only spaces the polls; the condition decides. ``wait_until`` is for threads and
plain test functions; ``wait_until_async`` for coroutines on an event loop (it awaits between polls, so
the loop keeps running what the condition waits for).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable, TypeVar, Union

T = TypeVar("T")
What = Union[str, Callable[[], str]]


def _timed_out(timeout: float, what: What, value: object) -> str:
    return f"timed out after {timeout} s waiting for {what() if callable(what) else what} (last value {value!r})"


def wait_until(predicate: Callable[[], T], timeout: float, what: What, *, interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises ``AssertionError`` naming ``what`` (and the last value) once ``timeout`` seconds have passed;
    ``what`` may be a callable, asked only then (to name what was last seen).
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: a bounded pause between two polls
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, what, value))
        pause.wait(interval)


async def wait_until_async(predicate: Callable[[], T], timeout: float, what: What, *, interval: float = 0.005) -> T:
    """``wait_until`` for a coroutine: the same rule, awaiting between polls so the event loop runs."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, what, value))
        await asyncio.sleep(interval)  # spacing the polls under a deadline, not sleeping to synchronise
