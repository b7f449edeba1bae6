"""How a launcher's live processes hear ``play``/``pause``/``kill`` broadcasts and answer them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
from typing import TYPE_CHECKING, Any

from ..transports._loop import AsyncFn, run_on
from ..transports.base import AsyncCommunicator, BroadcastFilter, InvalidTask
from ..wire.messages import ANSWER_PREFIX, MESSAGE_TEXT_KEY, Intent, Pid, wire_text

if TYPE_CHECKING:
    from .process import Process

__all__ = ["BroadcastsMixin"]

LOGGER = logging.getLogger("process_comms.worker.launcher")


class BroadcastsMixin:
    """Subscribes a launcher to broadcasts once per communicator and hands them to its live processes."""

    _broadcast_ids: dict[int, Any]
    _processes: dict[str, Process]

    async def _ensure_broadcasts(self, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop) -> None:
        if id(core) in self._broadcast_ids:
            return
        self._broadcast_ids[id(core)] = None

        def on_broadcast(_comm: Any, body: Any, _sender: Any, subject: Any, correlation_id: Any) -> None:
            self._on_broadcast(core, comm_loop, body, subject, correlation_id)

        # the subjects it acts on, so that a communicator of ours drops the rest undecoded (wire/extensions.py)
        wanted = BroadcastFilter(on_broadcast, subject=re.compile(f"({Intent.PLAY}|{Intent.PAUSE}|{Intent.KILL})$"))
        self._broadcast_ids[id(core)] = await self._on_comm_loop(comm_loop, core.add_broadcast_subscriber, wanted)

    def _on_broadcast(
        self, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop, body: Any, subject: Any, cid: Any
    ) -> None:
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
            fut = proc._schedule(str(subject), text, False)
            if cid is not None:
                fut.add_done_callback(functools.partial(self._answer, core, comm_loop, proc.pid, subject, cid))

    @staticmethod
    def _answer(
        core: AsyncCommunicator,
        comm_loop: asyncio.AbstractEventLoop,
        pid: Pid,
        subject: str,
        cid: Any,
        fut: concurrent.futures.Future[Any],
    ) -> None:
        result = False if fut.cancelled() or fut.exception() is not None else fut.result()
        answer = functools.partial(
            core.broadcast_send, result, sender=pid, subject=f"{ANSWER_PREFIX}{subject}", correlation_id=cid
        )
        run_on(comm_loop, answer)

    @staticmethod
    async def _on_comm_loop(comm_loop: asyncio.AbstractEventLoop, fn: AsyncFn[Any], *args: Any) -> Any:
        """``await fn(*args)`` on the communicator's loop (directly when already on it)."""
        if asyncio.get_running_loop() is comm_loop:
            return await fn(*args)
        return await asyncio.wrap_future(run_on(comm_loop, fn, *args))
