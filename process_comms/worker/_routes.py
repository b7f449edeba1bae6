"""A launcher's per-process RPC routes, and how an ended process keeps its route until its record is written.

kiwipy's wire format routes an RPC to a process by its own route (``[rpc].<pid>``). A process's reply no
longer waits for its record to be stored (the launch rate: docs/performance.md); instead the ended process stays
*held* with its route bound until the record is written, so whoever asks about it meanwhile is answered
by the process itself, and the fleet's record queries find it in memory (docs/performance.md, "What
records cost"). Only ended processes are held: a suspended one (released, or its worker stopping) is
written before it lets go, since a held one would answer a ``play`` it can no longer act on.

A route's subscriber is a :class:`_Route`, not the process itself: it answers for the run of the pid
that holds the route, so a new run of a pid (a launch that reuses it) takes the route over from a held,
ended one instead of failing with ``DuplicateSubscriber``, and a route being removed is waited for
first. Once removed, the communicator keeps the subscriber a while for requests routed before the
unbind (``transports/base.py``, ``RETIRED_RPC_SECONDS``): they get the last run's answer.

:class:`Broadcasts` is the other way a process is reached: ``play``/``pause``/``kill`` broadcasts, subscribed
once per communicator and handed to every live process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
from collections.abc import Callable
from typing import Protocol

from .. import defaults
from ..transports.base import BroadcastFilter, InvalidTask
from ..transports.loop import post
from ..wire.messages import ANSWER_PREFIX, MESSAGE_TEXT_KEY, Intent, Pid, wire_text
from ._link import CommLink
from .process import EndedRun, Process, RecordSink

__all__ = ["Broadcasts", "Routes"]

LOGGER = logging.getLogger("process_comms.worker.launcher")


class WhenWritten(RecordSink, Protocol):
    """A record sink that says when a process's record is written (records.py's ``RecordWriter``)."""

    def when_written(self, proc: Process, callback: Callable[[], None]) -> None: ...


class _Route:
    """The subscriber of one pid's route (on the communicator's loop): its run answers, and once the route
    is gone and the run has ended, an :class:`EndedRun` of it (the process itself is let go)."""

    __slots__ = ("proc",)

    def __init__(self, proc: Process) -> None:
        self.proc: Process | EndedRun = proc

    def __call__(self, comm: object, msg: object) -> object:
        return self.proc.handle_rpc(comm, msg)


class Routes:
    """Binds, holds and removes the RPC routes of a launcher's processes (all on the launcher's loop).

    ``processes`` is the launcher's own map of its live processes (by ``str(pid)``), shared, not copied."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, records: WhenWritten | None, processes: dict[str, Process]
    ) -> None:
        self.loop = loop
        self.records = records
        self._processes = processes
        #: Ended processes whose last record write, or the removal of their route after it, is in flight.
        self._ending: dict[str, Process] = {}
        #: Routes being removed, by key: resolved once unroutable (a new run of the pid waits for it).
        self._unbinding: dict[str, asyncio.Future[None]] = {}
        #: The bound routes, by key.
        self._routes: dict[str, _Route] = {}

    def held(self, pid: object) -> Process | None:
        """The process of ``pid`` if this launcher holds it: live, or ended with its last record write (or
        the removal of its route after it) in flight, so who asks about it is answered by the process."""
        key = str(pid)
        return self._processes.get(key) or self._ending.get(key)

    @property
    def ending(self) -> dict[str, Process]:
        """The ended processes still held (their record or their route's removal in flight), by ``str(pid)``."""
        return dict(self._ending)

    async def bind(self, proc: Process, link: CommLink) -> None:
        """Bind the route of ``proc``'s pid, or take it over from an ended run still held (its runtime's
        ``route_gone`` is resolved once the route is gone). The caller puts ``proc`` in the processes before
        its next await, so the held run does not remove the route."""
        key = str(proc.pid)
        while (unbinding := self._unbinding.get(key)) is not None:
            # bounded: an unbind stuck on a lost connection leaves the old subscriber, and the add below
            # then fails with DuplicateSubscriber instead of this run waiting for ever
            if not (await asyncio.wait({unbinding}, timeout=defaults.RPC_TIMEOUT))[0]:
                break
        route = self._routes.get(key)
        if route is not None and key in self._ending and key not in self._processes:
            route.proc = proc
            return
        route = _Route(proc)
        await link.call(link.core.add_rpc_subscriber, route, key)  # DuplicateSubscriber if live
        self._routes[key] = route

    def let_go(self, proc: Process, link: CommLink) -> None:
        """``proc`` has ended or been suspended: remove its route, after its record is written if it ended."""
        key = str(proc.pid)
        if proc.state.terminal and self.records is not None:
            self._ending[key] = proc
            self.records.when_written(proc, functools.partial(self._after_record, proc, link))
        elif key not in self._processes:
            self._unbind(proc, link)

    def _after_record(self, proc: Process, link: CommLink) -> None:
        key = str(proc.pid)
        if key in self._processes:  # a new run of this pid took the route over
            if self._ending.get(key) is proc:
                del self._ending[key]
            return
        self._unbind(proc, link)

    def _unbind(self, proc: Process, link: CommLink) -> None:
        key = str(proc.pid)
        unbound = self.loop.create_future()
        self._unbinding[key] = unbound
        route = self._routes.get(key)
        gone = proc.runtime.route_gone if proc.runtime is not None else None

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
            if gone is not None and not gone.done():
                gone.set_result(None)

        async def remove() -> None:
            try:
                await link.core.remove_rpc_subscriber(key)
            except Exception:  # noqa: BLE001 - on a lost connection the route went with it
                pass
            finally:
                post(self.loop, done)  # not posted once the loop is gone: the launcher is closed

        link.send(remove)


# -- broadcasts: play/pause/kill to every live process --------------------------------------------------
class Broadcasts:
    """Subscribes a launcher to broadcasts once per communicator and hands them to its live processes
    (``processes``: the launcher's own map, shared)."""

    def __init__(self, processes: dict[str, Process]) -> None:
        self._processes = processes
        self._ids: dict[int, object] = {}

    async def ensure(self, link: CommLink) -> None:
        """Subscribe to ``link``'s communicator's broadcasts (once for each communicator)."""
        if id(link.core) in self._ids:
            return
        self._ids[id(link.core)] = None

        def on_broadcast(_comm: object, body: object, _sender: object, subject: object, correlation_id: object) -> None:
            self.deliver(link, body, subject, correlation_id)

        # the subjects it acts on, so that a communicator of ours drops the rest undecoded (wire/messages.py)
        wanted = BroadcastFilter(on_broadcast, subject=re.compile(f"({Intent.PLAY}|{Intent.PAUSE}|{Intent.KILL})$"))
        self._ids[id(link.core)] = await link.call(link.core.add_broadcast_subscriber, wanted)

    def deliver(self, link: CommLink, body: object, subject: object, cid: object) -> None:
        """``play``/``pause``/``kill`` broadcasts reach every live process (``force_kill`` is ignored, as in plumpy).

        With a correlation id, each process answers with an ``intent_result.<intent>`` broadcast (sender = its
        pid, body = its result), so a controller can tell which processes acted (plumpy processes do not).
        """
        if subject not in (Intent.PLAY, Intent.PAUSE, Intent.KILL):
            return
        text = body.get(MESSAGE_TEXT_KEY) if isinstance(body, dict) and subject != Intent.PLAY else None
        try:  # the text becomes each process's status, saved by every checkpoint: a str or None only
            text = wire_text(text, f"text of a {subject} broadcast")
        except InvalidTask as exc:
            LOGGER.warning("dropped a %s broadcast: %s", subject, exc)
            return
        for proc in list(self._processes.values()):
            fut = proc.handle_intent(str(subject), text, False)
            if cid is not None:
                fut.add_done_callback(functools.partial(_answer, link, proc.pid, str(subject), cid))


def _answer(link: CommLink, pid: Pid, subject: str, cid: object, fut: concurrent.futures.Future[bool]) -> None:
    result = False if fut.cancelled() or fut.exception() is not None else fut.result()
    answer = functools.partial(
        link.core.broadcast_send, result, sender=pid, subject=f"{ANSWER_PREFIX}{subject}", correlation_id=cid
    )
    link.send(answer)
