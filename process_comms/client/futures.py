"""What a caller does with the futures the controllers return: wait for many under one deadline, await them.

:class:`ControllerFuture` and the deadline helper are defined with the loop thread that completes them
(:mod:`process_comms.transports.loop`) and re-exported here, the client's one home for futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Iterable, Mapping
from typing import TypeVar, overload

from .. import defaults
from ..errors import TimeoutError as PCTimeoutError
from ..transports.loop import ControllerFuture, with_deadline

__all__ = ["ControllerFuture", "wait_all", "as_asyncio", "with_deadline", "outcomes"]

T = TypeVar("T")
K = TypeVar("K")


def as_asyncio(fut: concurrent.futures.Future[T] | Awaitable[T]) -> Awaitable[T]:
    """Make a returned future awaitable from any running loop (e.g. Jupyter's)."""
    if isinstance(fut, concurrent.futures.Future):
        return asyncio.wrap_future(fut)
    return fut


@overload
def wait_all(  # type: ignore[overload-overlap]  # a mapping is also an iterable (of its keys): it is taken first
    futures: Mapping[K, concurrent.futures.Future[T]], timeout: float | None = None
) -> dict[K, T | BaseException]: ...


@overload
def wait_all(
    futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None
) -> dict[concurrent.futures.Future[T], T | BaseException]: ...


def wait_all(
    futures: Mapping[K, concurrent.futures.Future[T]] | Iterable[concurrent.futures.Future[T]],
    timeout: float | None = None,
) -> dict[K, T | BaseException] | dict[concurrent.futures.Future[T], T | BaseException]:
    """Wait for many futures under one deadline; return ``{key: result or exception}``.

    Keys are the mapping's keys, or the futures themselves for an iterable. Futures still pending at the
    deadline map to a :class:`process_comms.TimeoutError` (they are not cancelled: the caller decides).
    """
    deadline = defaults.RPC_TIMEOUT if timeout is None else timeout
    if isinstance(futures, Mapping):
        keyed = dict(futures)
        concurrent.futures.wait(list(keyed.values()), timeout=deadline)
        return outcomes(keyed, deadline)
    by_self = {f: f for f in futures}
    concurrent.futures.wait(list(by_self), timeout=deadline)
    return outcomes(by_self, deadline)


def outcomes(futures: Mapping[K, concurrent.futures.Future[T]], deadline: float) -> dict[K, T | BaseException]:
    """``{key: result or exception}`` of futures now; one still pending maps to a TimeoutError."""
    out: dict[K, T | BaseException] = {}
    for key, fut in futures.items():
        if not fut.done():
            out[key] = PCTimeoutError(f"no answer within {deadline:g} s")
        elif fut.cancelled():
            out[key] = concurrent.futures.CancelledError()
        else:
            exc = fut.exception()
            out[key] = exc if exc is not None else fut.result()
    return out
