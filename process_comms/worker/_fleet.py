"""A worker in a fleet (docs/fleet.md, "Workers"): its queues and slots, its health, and its answer to ``workers``.

``controller.list_workers(within)`` broadcasts :data:`WORKERS_SUBJECT` with a correlation id; every
worker answers with an ``intent_result.workers`` broadcast (sender: its id, body: :meth:`Worker.info`),
as processes answer ``pause_all(answers_within=...)`` (_routes.py, Broadcasts): one round trip for the fleet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from ..transports.base import CURRENT_DELIVERY, AsyncCommunicator, Delivery
from ..transports.loop import run_on
from ..wire.messages import ANSWER_PREFIX
from ..wire.types import DEFAULT_QUEUE, WORKERS_SUBJECT
from .launcher import Accepted, Answer

__all__ = ["DEFAULT_QUEUE", "WORKERS_SUBJECT", "SlotCounter", "WorkersAnswer", "check_queues"]

LOGGER = logging.getLogger("process_comms.worker")


def check_queues(queues: Mapping[str, int]) -> dict[str, int]:
    """``{queue name: slots}`` checked: names non-empty strings, slots integers of 0 or more (0: no limit)."""
    if not queues:
        raise ValueError("queues must name at least one task queue")
    checked: dict[str, int] = {}
    for name, slots in queues.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"a task queue name must be a non-empty string, not {name!r}")
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 0:
            raise ValueError(f"the slots of queue {name!r} must be an integer of 0 or more (0: no limit): {slots!r}")
        checked[name] = slots
    return checked


class Acceptor(Protocol):
    """What takes a queue's tasks: the launcher (launcher.py), or a recycling worker's wrapper of it (_recycle.py)."""

    def accept(self, communicator: object, task: object, delivery: Delivery | None) -> Accepted: ...


class SlotCounter:
    """The launcher as one queue's task subscriber, counting that queue's tasks in progress here.

    A task is in progress until the launcher's future is done and, for a persisted ``nowait`` launch, until
    its held delivery is released (the process ended): as long as it takes one of the queue's slots.
    """

    #: Called on the communicator's loop directly, as the launcher it wraps.
    loop_safe = True

    def __init__(self, launcher: Acceptor, queue: str, slots: int) -> None:
        self.launcher, self.queue, self.slots = launcher, queue, slots
        self.used = 0
        self._lock = threading.Lock()

    def __call__(self, communicator: object, task: object) -> concurrent.futures.Future[Answer]:
        # a task refused here raises: it took no slot
        fut, hold = self.launcher.accept(communicator, task, CURRENT_DELIVERY.get())
        pending: list[concurrent.futures.Future[Answer] | concurrent.futures.Future[None]] = [fut]
        if hold is not None:
            pending.append(hold)
        left = [len(pending)]
        with self._lock:
            self.used += 1

        def settled(_f: object) -> None:
            with self._lock:
                left[0] -= 1
                if left[0] == 0:
                    self.used -= 1

        for f in pending:
            f.add_done_callback(settled)
        return fut


class WorkersAnswer:
    """The broadcast subscriber that answers a ``workers`` request with the worker's :meth:`info`."""

    #: Called on the communicator's loop directly: it only schedules the answer.
    loop_safe = True

    def __init__(
        self,
        worker_id: str,
        info: Callable[[], dict[str, object]],
        core: AsyncCommunicator,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.worker_id, self.info, self.core, self.loop = worker_id, info, core, loop

    def is_filtered(self, _sender: object, subject: object) -> bool:
        """kiwipy's filter question: a communicator of ours drops what every subscriber filters out undecoded."""
        return bool(subject != WORKERS_SUBJECT)

    def __call__(self, _comm: object, _body: object, _sender: object, subject: object, correlation_id: object) -> None:
        if subject != WORKERS_SUBJECT or correlation_id is None:
            return
        answer = functools.partial(
            self.core.broadcast_send,
            self.info(),
            sender=self.worker_id,
            subject=f"{ANSWER_PREFIX}{WORKERS_SUBJECT}",
            correlation_id=correlation_id,
        )
        run_on(self.loop, answer).add_done_callback(_log_failure)


def _log_failure(fut: concurrent.futures.Future[bool]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        LOGGER.warning("could not answer a workers request: %s", fut.exception())
