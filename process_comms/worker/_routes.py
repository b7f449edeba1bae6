"""A launcher's per-process RPC routes, and how an ended process keeps its route until its record is written.

kiwipy's wire format routes an RPC to a process by its own route (``[rpc].<pid>``). A process's reply no
longer waits for its record to be stored (issue 16's launch rate); instead the ended process stays
*held* with its route bound until the record is written, so whoever asks about it meanwhile is answered
by the process itself, and the fleet's record queries find it in memory (docs/performance.md, "What
records cost"). Only ended processes are held: a suspended one (released, or its worker stopping) is
written before it lets go, since a held one would answer a ``play`` it can no longer act on.

A route's subscriber is a :class:`_Route`, not the process itself: it answers for the run of the pid
that holds the route, so a new run of a pid (a launch that reuses it) takes the route over from a held,
ended one instead of failing with ``DuplicateSubscriber``, and a route being removed is waited for
first. Once removed, the communicator keeps the subscriber a while for requests routed before the
unbind (``transports/base.py``, ``RETIRED_RPC_SECONDS``): they get the last run's answer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..transports.base import AsyncCommunicator
from ..transports.loop import post, run_on
from ..wire.messages import Pid
from .process import EndedRun

if TYPE_CHECKING:
    from .process import Process
    from .records import RecordWriter

__all__ = ["RoutesMixin"]


class _Route:
    """The subscriber of one pid's route (on the communicator's loop): its run answers, and once the route
    is gone and the run has ended, an :class:`EndedRun` of it (the process itself is let go)."""

    __slots__ = ("proc",)

    def __init__(self, proc: Process) -> None:
        self.proc: Process | EndedRun = proc

    def __call__(self, comm: Any, msg: Any) -> Any:
        return self.proc._on_rpc(comm, msg)


class RoutesMixin:
    """Binds, holds and removes the RPC routes of a launcher's processes (all on the launcher's loop)."""

    loop: asyncio.AbstractEventLoop
    records: RecordWriter | None
    _processes: dict[str, Process]
    _on_comm_loop: Callable[..., Awaitable[Any]]

    def _init_routes(self) -> None:
        #: Ended processes whose last record write, or the removal of their route after it, is in flight.
        self._ending: dict[str, Process] = {}
        #: Routes being removed, by key: resolved once unroutable (a new run of the pid waits for it).
        self._unbinding: dict[str, asyncio.Future[None]] = {}
        #: The bound routes, by key.
        self._routes: dict[str, _Route] = {}

    def held(self, pid: Pid) -> Process | None:
        """The process of ``pid`` if this launcher holds it: live, or ended with its last record write (or
        the removal of its route after it) in flight, so who asks about it is answered by the process."""
        key = str(pid)
        return self._processes.get(key) or self._ending.get(key)

    @property
    def ending(self) -> dict[str, Process]:
        """The ended processes still held (their record or their route's removal in flight), by ``str(pid)``."""
        return dict(self._ending)

    async def _bind_route(self, proc: Process, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop) -> None:
        """Bind the route of ``proc``'s pid, or take it over from an ended run still held. The caller puts
        ``proc`` in ``_processes`` before its next await, so the held run does not remove the route."""
        key = str(proc.pid)
        while (unbinding := self._unbinding.get(key)) is not None:
            # bounded: an unbind stuck on a lost connection leaves the old subscriber, and the add below
            # then fails with DuplicateSubscriber instead of this run waiting for ever
            if not (await asyncio.wait({unbinding}, timeout=defaults.RPC_TIMEOUT))[0]:
                break
        route = self._routes.get(key)
        proc._route_gone = self.loop.create_future()
        if route is not None and key in self._ending and key not in self._processes:
            route.proc = proc
            return
        route = _Route(proc)
        await self._on_comm_loop(comm_loop, core.add_rpc_subscriber, route, key)  # DuplicateSubscriber if live
        self._routes[key] = route

    def _let_go_route(
        self, proc: Process, core: AsyncCommunicator | None, comm_loop: asyncio.AbstractEventLoop | None
    ) -> None:
        """``proc`` has ended or been suspended: remove its route, after its record is written if it ended."""
        key = str(proc.pid)
        if core is None or comm_loop is None:
            return
        if proc.state.terminal and self.records is not None:
            self._ending[key] = proc
            self.records.when_written(proc, functools.partial(self._after_record, proc, core, comm_loop))
        elif key not in self._processes:
            self._unbind(proc, core, comm_loop)

    def _after_record(self, proc: Process, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop) -> None:
        key = str(proc.pid)
        if key in self._processes:  # a new run of this pid took the route over
            if self._ending.get(key) is proc:
                del self._ending[key]
            return
        self._unbind(proc, core, comm_loop)

    def _unbind(self, proc: Process, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop) -> None:
        key = str(proc.pid)
        unbound = self.loop.create_future()
        self._unbinding[key] = unbound
        route = self._routes.get(key)

        def done() -> None:
            if self._unbinding.get(key) is unbound:
                del self._unbinding[key]
            if self._ending.get(key) is proc:
                del self._ending[key]
            if route is not None and self._routes.get(key) is route:
                del self._routes[key]
            if route is not None and route.proc is proc and proc.state.terminal:
                route.proc = EndedRun(proc)  # what a request routed before the unbind is answered with
            unbound.set_result(None)
            if proc._route_gone is not None and not proc._route_gone.done():
                proc._route_gone.set_result(None)

        def settled(_: Any) -> None:
            post(self.loop, done)  # not posted once the loop is gone: the launcher is closed

        run_on(comm_loop, core.remove_rpc_subscriber, key).add_done_callback(settled)
