"""A launcher's per-process RPC routes, and how an ended process keeps its route until its record is written.

kiwipy's wire format routes an RPC to a process by its own route (``[rpc].<pid>``). A process's reply no
longer waits for its record to be stored (issue 16's launch rate); instead the ended process stays
*held* with its route bound until the record is written, so whoever asks about it meanwhile is answered
by the process itself, and the fleet's record queries find it in memory (docs/performance.md, "What
records cost"). Only ended processes are held: a suspended one (released, or its worker stopping) is
written before it lets go, since a held one would answer a ``play`` it can no longer act on.

The route's subscriber is the launcher's, not the process's: it answers for whichever run of the pid
this launcher holds, so a new run of a pid (a launch that reuses it) takes the route over from a held
one instead of failing with ``DuplicateSubscriber``, and a route being removed is waited for first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..transports._loop import run_on
from ..transports.base import AsyncCommunicator
from ..wire.messages import Pid

if TYPE_CHECKING:
    from .process import Process
    from .records import RecordWriter

__all__ = ["RoutesMixin"]

LOGGER = logging.getLogger("process_comms.worker.launcher")


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

    def held(self, pid: Pid) -> Process | None:
        """The process of ``pid`` if this launcher holds it: live, or ended with its last record write (or
        the removal of its route after it) in flight, so who asks about it is answered by the process."""
        key = str(pid)
        return self._processes.get(key) or self._ending.get(key)

    @property
    def ending(self) -> dict[str, Process]:
        """The ended processes still held (their record or their route's removal in flight), by ``str(pid)``."""
        return dict(self._ending)

    def _route_rpc(self, key: str, comm: Any, msg: Any) -> Any:
        """The route's subscriber (on the communicator's loop): the held run of the pid answers."""
        proc = self._processes.get(key) or self._ending.get(key)
        if proc is None:
            raise LookupError(f"process {key} is no longer held by this worker")
        return proc._on_rpc(comm, msg)

    async def _bind_route(self, key: str, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop) -> None:
        """Bind the route of ``key``, unless a held run of it still has one (taken over as it is). The caller
        puts the new run in ``_processes`` before its next await, so the held run does not remove it."""
        while (unbinding := self._unbinding.get(key)) is not None:
            await unbinding
        if key in self._ending:
            return
        await self._on_comm_loop(comm_loop, core.add_rpc_subscriber, functools.partial(self._route_rpc, key), key)

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

        def done() -> None:
            if self._unbinding.get(key) is unbound:
                del self._unbinding[key]
            if self._ending.get(key) is proc:
                del self._ending[key]
            unbound.set_result(None)

        def settled(_: Any) -> None:
            try:
                self.loop.call_soon_threadsafe(done)
            except RuntimeError:
                pass  # the loop is gone: the launcher is closed

        run_on(comm_loop, core.remove_rpc_subscriber, key).add_done_callback(settled)
