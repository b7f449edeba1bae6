"""How a launcher's live processes hear ``play``/``pause``/``kill`` broadcasts and answer them."""

from __future__ import annotations

import concurrent.futures
import functools
import logging

from ..transports.base import InvalidTask
from ..wire.messages import ANSWER_PREFIX, MESSAGE_TEXT_KEY, Intent, Pid, wire_text
from ._link import CommLink
from .process import Process

__all__ = ["Broadcasts"]

LOGGER = logging.getLogger("process_comms.worker.launcher")


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

        self._ids[id(link.core)] = await link.call(link.core.add_broadcast_subscriber, on_broadcast)

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
