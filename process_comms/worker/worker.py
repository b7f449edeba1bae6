"""A worker: one communicator, one persister and one :class:`ProcessLauncher`, with a graceful stop.

``process-comms worker`` runs one. A graceful stop takes no new tasks, checkpoints the running
processes and hands their tasks back to the queue, so another worker continues each of them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from typing import Any

from .. import defaults
from ..errors import DuplicateSubscriber
from ..transports._loop import run_on
from ..transports.threaded import ThreadCommunicator, connect
from ..wire.messages import Pid, records_route
from .launcher import ProcessLauncher
from .persistence import Persister, get_persister
from .records import RECORD_MAX_AGE, RECORD_MAX_COUNT, RECORD_PRUNE_INTERVAL
from .records_service import RecordsService

__all__ = ["Worker"]

LOGGER = logging.getLogger(__name__)


class Worker:
    """Runs processes for the task queue of ``broker`` (None: the embedded communicator)."""

    def __init__(
        self,
        broker: str | None = None,
        *,
        persister: str | Persister | None = None,
        allowed_modules: Iterable[str] | None = None,
        communicator: ThreadCommunicator | None = None,
        claim_ttl: float = defaults.CLAIM_TTL,
        records: bool = True,
        record_max_age: float = RECORD_MAX_AGE,
        record_max_count: int = RECORD_MAX_COUNT,
        record_prune_interval: float = RECORD_PRUNE_INTERVAL,
        **options: Any,
    ) -> None:
        """``persister`` is a Persister or a URL (``sqlite:///file.db``, ``postgresql://...``).

        With ``records`` (the default) every process run here gets a record in the persister, kept
        ``record_max_age`` seconds after it ended and at most ``record_max_count`` of them; the worker
        answers record queries of the fleet (``list_processes``, ``get_process``...).
        """
        self.persister: Persister = persister if isinstance(persister, Persister) else get_persister(persister)
        self._own_comm = communicator is None
        self.communicator = communicator if communicator is not None else connect(broker, **options)
        self.launcher = ProcessLauncher(
            persister=self.persister, allowed_modules=allowed_modules, claim_ttl=claim_ttl, records=records
        )
        self._retention = (record_max_age, record_max_count, record_prune_interval)
        self.records: RecordsService | None = None
        self._subscription: Any = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> Worker:
        """Start taking tasks."""
        if self.launcher.records is not None:
            self._answer_records()
        self._subscription = self.communicator.add_task_subscriber(self.launcher)
        LOGGER.info("worker taking tasks on %r", self.communicator)
        return self

    def _answer_records(self) -> None:
        """Subscribe the fleet's records route and start pruning the store."""
        core = self.communicator.core
        max_age, max_count, interval = self._retention
        service = RecordsService(
            self.launcher, core, self.communicator.loop, max_age=max_age, max_count=max_count, prune_interval=interval
        )
        route = records_route(str(getattr(core, "task_queue_name", "embedded")))

        async def subscribe() -> None:
            try:
                await core.add_rpc_subscriber(service, route)
            except DuplicateSubscriber:  # another worker on this (embedded) communicator answers already
                LOGGER.debug("records route %s is answered by another worker on this communicator", route)

        self.communicator.submit(subscribe).result(defaults.CONNECT_TIMEOUT + 5)
        service.start_pruning()
        self.records = service

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _release(self) -> list[Pid]:
        """Stop taking tasks, checkpoint and stop the running processes, then requeue their tasks."""
        suspended: list[Pid] = []

        async def suspend() -> None:
            suspended.extend(await asyncio.wrap_future(run_on(self.launcher.loop, self.launcher.suspend_all)))

        await self.communicator.core.release_tasks(suspend())
        return suspended

    def stop(self, graceful: bool = True, timeout: float = defaults.CLOSE_TIMEOUT) -> list[Pid]:
        """Stop; gracefully: checkpoint running processes and requeue their tasks. Returns the pids handed back."""
        with self._lock:
            if self._stopped.is_set():
                return []
            self._stopped.set()
        handed_back: list[Pid] = []
        if graceful and not self.communicator.is_closed():
            try:
                handed_back = self.communicator.submit(self._release).result(timeout)
            except Exception:
                LOGGER.exception("graceful stop did not complete; unacked tasks will be redelivered by the broker")
        if self._own_comm:
            self.communicator.close()
        if self.records is not None:
            self.records.stop_pruning()
        self.launcher.close()
        self.persister.close()
        LOGGER.info("worker stopped; handed back %d process(es)", len(handed_back))
        return handed_back

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called (True) or ``timeout`` passes (False)."""
        return self._stopped.wait(timeout)
