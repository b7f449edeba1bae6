"""The one object that crosses from the launcher's loop to the communicator's loop and back.

A worker runs two event loops (CONTRIBUTING.md, "The worker: threads, loops and one launch"): the communicator's
(AMQP I/O) and the launcher's (the processes). Everything a process or the launcher asks of the communicator
goes through the :class:`CommLink` of that communicator: :meth:`CommLink.call` when the answer is awaited (a
route's bind, the liveness token), :meth:`CommLink.send` when it is not (state broadcasts, answers, unbinds).
The sends of one turn of the launcher's loop cross together, in order, in one hand-over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, runtime_checkable

from ..transports.base import AsyncCommunicator
from ..transports.loop import post, run_on, spawn_each_on, spawn_on

__all__ = ["ALIVE_CACHE", "CommLink", "HasCore"]

#: Seconds one answer of ``is_alive`` serves every pid waiting on the same holder.
ALIVE_CACHE = 0.5

T = TypeVar("T")


@runtime_checkable
class HasCore(Protocol):
    """A thread facade over an async communicator (``ThreadCommunicator``): its core and the loop it runs on."""

    @property
    def core(self) -> AsyncCommunicator: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...


class CommLink:
    """A communicator's async core and its loop, as one object, seen from the launcher's loop ``home``."""

    __slots__ = ("_alive", "_outbox", "_token", "_tokened", "bound", "core", "crossings", "home", "loop")

    def __init__(
        self, core: AsyncCommunicator, loop: asyncio.AbstractEventLoop, home: asyncio.AbstractEventLoop
    ) -> None:
        self.core = core
        #: The communicator's loop.
        self.loop = loop
        #: The launcher's loop, where :meth:`send` gathers a turn's sends.
        self.home = home
        #: Hand-overs to the communicator's loop so far (a round trip of :meth:`call` counts one each way).
        self.crossings = 0
        #: Whether a route was bound through this link and awaited: the broker allowed this worker's binds
        #: (``Routes.bind`` sends a new pid's bind without waiting after that).
        self.bound = False
        self._outbox: list[Callable[[], Awaitable[object]]] | None = None
        self._token: str | None = None
        self._tokened = False
        self._alive: dict[str, tuple[bool | None, float]] = {}

    async def call(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """``await fn(*args)`` on the communicator's loop (directly when already on it)."""
        if asyncio.get_running_loop() is self.loop:
            return await fn(*args)
        self.flush()  # what was sent before this call reaches the communicator first
        self.crossings += 2
        return await asyncio.wrap_future(run_on(self.loop, fn, *args))

    def send(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Start ``await fn()`` on the communicator's loop, not waited for: with the other sends of this turn
        of the launcher's loop, in order, in one hand-over (a failure is logged there)."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is not self.home:  # another thread (a threaded run's callback): its own hand-over
            self.crossings += 1
            spawn_on(self.loop, fn)
        elif self._outbox is None:
            self._outbox = [fn]
            if not post(self.home, self.flush):  # the launcher's loop is gone: cross at once
                self.flush()
        else:
            self._outbox.append(fn)

    def flush(self) -> None:
        """Hand the sends gathered so far to the communicator's loop now (on the launcher's loop): what is posted
        there after them, a call or a task's answer, starts after them."""
        outbox, self._outbox = self._outbox, None
        if not outbox:
            return
        self.crossings += 1
        spawn_each_on(self.loop, outbox)  # started in order, ahead of what is posted after them (a call)

    @property
    def token(self) -> str | None:
        """This worker's liveness token on the communicator once :meth:`liveness_token` got it, else None."""
        return self._token

    async def liveness_token(self) -> str | None:
        """This worker's liveness token on the communicator, asked once (None if it cannot get one)."""
        if not self._tokened:
            self._token = await self.call(self.core.liveness_token)
            self._tokened = True
        return self._token

    async def is_alive(self, token: str | None) -> bool | None:
        """Whether the holder of ``token`` is connected: True, False, or None (no token, or the broker cannot
        tell now); one answer serves every asker for :data:`ALIVE_CACHE` seconds."""
        if token is None:
            return None
        now = time.monotonic()
        cached = self._alive.get(token)
        if cached is not None and now - cached[1] < ALIVE_CACHE:
            return cached[0]
        try:
            alive = await self.call(self.core.is_alive, token)
        except Exception:  # noqa: BLE001 - the broker cannot tell now: the TTL rule decides
            alive = None
        self._alive[token] = (alive, now)
        if len(self._alive) > 1024:
            self._alive = {key: value for key, value in self._alive.items() if now - value[1] < ALIVE_CACHE}
        return alive
