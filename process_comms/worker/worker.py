"""A worker: one communicator, one persister and one :class:`ProcessLauncher`, with a graceful stop.

``process-comms worker`` runs one. A graceful stop takes no new tasks, checkpoints the running
processes and hands their tasks back to the queue, so another worker continues each of them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from .. import defaults
from ..errors import DuplicateSubscriber
from ..transports.connect import connect
from ..transports.loop import run_on
from ..transports.threaded import ThreadCommunicator
from ..wire.messages import Pid, records_route
from ..wire.types import DEFAULT_QUEUE, queue_name
from . import _module_logs
from ._recycle import Recycler
from .launcher import ProcessLauncher, SlotCounter, WorkersAnswer, check_queues
from .persistence import Persister, get_persister
from .records import RECORD_MAX_AGE, RECORD_MAX_COUNT, RECORD_PRUNE_INTERVAL
from .records_service import RecordsService

__all__ = ["GC_THRESHOLDS", "Worker", "tune_gc"]

LOGGER = logging.getLogger(__name__)

#: The garbage collector's thresholds in a process that serves as a worker (:func:`tune_gc`); CPython's
#: defaults are (700, 10, 10) on 3.10-3.12 and (2000, 10, 10) on 3.13.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> int:
    """Fit this process's garbage collector to a worker; returns how many start-up objects it froze.

    Call it once start-up is done, in a process that exists to be a worker: ``process-comms worker`` does
    (``--no-tune-gc`` keeps CPython's defaults). A :class:`Worker` never does it by itself, since a library
    does not change its host's collector.

    A launch allocates a few hundred container objects: messages, futures, tasks, a process's state. Almost all
    of them are freed by reference counting. With the default thresholds the young generation is collected
    every 700 allocations, and the whole heap again and again as processes pile up. With 5,000 live processes
    that was 40 % of the worker's time; with a few, 0.3-0.5 ms of its 1.4-1.8 ms CPU per launch
    (docs/performance.md, "The garbage collector of a worker").

    It collects once, then :func:`gc.freeze` moves what start-up made (modules, classes, the connection) to the
    permanent generation, so no later collection walks it again. Cycles are still collected, only less often: at
    most ``thresholds[0]`` young objects wait for the next young collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    return gc.get_freeze_count()


@runtime_checkable
class BrokerQueues(Protocol):
    """A communicator with named task queues on a broker (the RabbitMQ back end; the embedded one has none)."""

    task_queue_name: str
    task_prefetch_count: int

    def consuming_queues(self) -> dict[str, bool]: ...


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
        queues: Mapping[str, int] | None = None,
        max_processes: int | None = None,
        **options: Any,
    ) -> None:
        """``persister`` is a Persister or a URL (``sqlite:///file.db``, ``postgresql://...``).

        ``queues``: ``{task queue name: slots}`` to consume, e.g. ``{"default": 200, "gpu": 4}``: at most
        that many of the queue's tasks in progress here (0: no limit); ``"default"`` is the installation's
        task queue. None (the default): the default task queue only, with ``task_prefetch_count`` slots.

        With ``records`` (the default) every process run here gets a record in the persister, kept
        ``record_max_age`` seconds after it ended and at most ``record_max_count`` of them; the worker
        answers record queries of the fleet (``list_processes``, ``get_process``...).

        ``max_processes``: after that many processes (launch and continue tasks) it takes no more tasks,
        and once they have all ended it stops by itself and :meth:`wait` returns (its supervisor starts a
        fresh worker: memory back after a peak, as Celery's ``worker_max_tasks_per_child``). None: no limit.
        """
        self.persister: Persister = persister if isinstance(persister, Persister) else get_persister(persister)
        self._own_comm = communicator is None
        self.communicator = communicator if communicator is not None else connect(broker, **options)
        self.launcher = ProcessLauncher(
            persister=self.persister, allowed_modules=allowed_modules, claim_ttl=claim_ttl, records=records
        )
        self._retention = (record_max_age, record_max_count, record_prune_interval)
        self.records: RecordsService | None = None
        self._queues = check_queues(queues) if queues is not None else None
        self._slots: dict[str, SlotCounter] = {}
        self._answer_id: object = None
        self._started_at: float | None = None
        self._stopped = threading.Event()
        self._ended = threading.Event()
        self._recycle = Recycler(self.launcher, max_processes, self.stop) if max_processes else None
        self._lock = threading.Lock()
        self._module_logs = False  # the handler that keeps module-logger lines in records (_module_logs.py)

    def start(self) -> Worker:
        """Start taking tasks (from every queue of ``queues``) and answering ``workers`` requests."""
        if self.launcher.records is not None:
            self._answer_records()
        if not self._module_logs:
            _module_logs.install()
            self._module_logs = True
        self._started_at = time.monotonic()
        if self._queues is None:  # the default queue, with the communicator's prefetch count (as before named queues)
            core = self.communicator.core
            slots = int(core.task_prefetch_count or 0) if isinstance(core, BrokerQueues) else 0
            self._slots[DEFAULT_QUEUE] = SlotCounter(self._recycle or self.launcher, DEFAULT_QUEUE, slots)
            self._subscribed(DEFAULT_QUEUE, self.communicator.add_task_subscriber(self._slots[DEFAULT_QUEUE]))
        else:
            for name, slots in self._queues.items():
                self._slots[name] = SlotCounter(self._recycle or self.launcher, name, slots)
                subscription = self.communicator.add_task_subscriber(
                    self._slots[name], queue=name, prefetch_count=slots
                )
                self._subscribed(name, subscription)
        core = self.communicator.core
        answer = WorkersAnswer(self.launcher.owner, self.info, core, self.communicator.loop)
        self._answer_id = self.communicator.add_broadcast_subscriber(answer)
        LOGGER.info("worker %s taking tasks from %s on %r", self.launcher.owner, dict(self.slots()), self.communicator)
        return self

    def _subscribed(self, queue: str, identifier: Any) -> None:
        if self._recycle is not None:  # cancelled when it has taken its max_processes (_recycle.py)
            self._recycle.subscribed(self.communicator.core, identifier, queue)

    @property
    def recycled(self) -> bool:
        """True once it took its ``max_processes`` (it takes no more tasks; it stops when they have ended)."""
        return self._recycle is not None and self._recycle.full

    @property
    def worker_id(self) -> str:
        """This worker's name in the store's claims, its logs and ``workers``: ``host:os-pid:random``."""
        return self.launcher.owner

    def slots(self) -> dict[str, int]:
        """``{queue: slots}`` this worker consumes (0: no limit)."""
        return {name: counter.slots for name, counter in self._slots.items()}

    def health(self) -> dict[str, object]:
        """For supervisors: ``consuming`` (every queue delivers tasks here), ``queues`` ({name: consuming})
        and ``slots`` ({name: {"used": n, "total": n or None for no limit}})."""
        core = self.communicator.core
        running = self._started_at is not None and not self._stopped.is_set() and not self.communicator.is_closed()
        broker_names = core.consuming_queues() if isinstance(core, BrokerQueues) else None
        task_queue = core.task_queue_name if isinstance(core, BrokerQueues) else ""
        queues: dict[str, bool] = {}
        for name in self._slots:
            if broker_names is None:  # the embedded back end: one answer for all
                queues[name] = bool(core.consuming)
            else:
                queues[name] = bool(broker_names.get(queue_name(task_queue, name), False))
            queues[name] = queues[name] and running
        slots = {name: {"used": c.used, "total": c.slots or None} for name, c in self._slots.items()}
        return {"consuming": bool(queues) and all(queues.values()), "queues": queues, "slots": slots}

    def info(self) -> dict[str, object]:
        """What ``process-comms workers`` lists: :meth:`health` with the host, OS pid, uptime and processes."""
        uptime = 0.0 if self._started_at is None else time.monotonic() - self._started_at
        return {
            "worker": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "uptime": round(uptime, 3),
            "processes": len(self.launcher.processes),
            **self.health(),
        }

    def _answer_records(self) -> None:
        """Subscribe the fleet's records route and start pruning the store."""
        core = self.communicator.core
        max_age, max_count, interval = self._retention
        service = RecordsService(
            self.launcher, core, self.communicator.loop, max_age=max_age, max_count=max_count, prune_interval=interval
        )
        route = records_route(core.task_queue_name if isinstance(core, BrokerQueues) else "embedded")

        async def subscribe() -> None:
            try:
                await core.add_rpc_subscriber(service, route)
            except DuplicateSubscriber:  # another worker on this (embedded) communicator answers already
                LOGGER.debug("records route %s is answered by another worker on this communicator", route)

        self.communicator.submit(subscribe).result(defaults.CONNECT_TIMEOUT + 5)
        service.start_pruning()
        service.start_sweeping()
        self.records = service

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _release(self) -> tuple[list[Pid], list[Pid]]:
        """Stop taking tasks, checkpoint and stop the running processes, then requeue their tasks."""
        outcome: list[tuple[list[Pid], list[Pid]]] = []

        async def suspend() -> None:
            outcome.append(await asyncio.wrap_future(run_on(self.launcher.loop, self.launcher.suspend_all)))

        await self.communicator.core.release_tasks(suspend())
        return outcome[0] if outcome else ([], [])

    def stop(self, graceful: bool = True, timeout: float = defaults.CLOSE_TIMEOUT) -> list[Pid]:
        """Stop; gracefully: checkpoint the persisted processes and requeue their tasks, and mark the others
        lost in their records (nothing can continue them). Returns the pids handed back."""
        with self._lock:
            if self._stopped.is_set():
                return []
            self._stopped.set()
        if self._recycle is not None:
            self._recycle.cancel()  # this stop wins over a recycling under way (_recycle.py)
        try:
            return self._stop(graceful, timeout)
        finally:
            self._ended.set()

    def _stop(self, graceful: bool, timeout: float) -> list[Pid]:
        handed_back: list[Pid] = []
        lost: list[Pid] = []
        if graceful and not self.communicator.is_closed():
            try:
                handed_back, lost = self.communicator.submit(self._release).result(timeout)
            except Exception:
                LOGGER.exception("graceful stop did not complete; unacked tasks will be redelivered by the broker")
        if self._own_comm:
            self.communicator.close()
        elif self._answer_id is not None and not self.communicator.is_closed():
            try:
                self.communicator.remove_broadcast_subscriber(self._answer_id)
            except Exception:  # the communicator is someone else's: it may be closing
                LOGGER.debug("could not remove the workers answer", exc_info=True)
        if self.records is not None:
            self.records.stop_pruning()
            self.records.stop_sweeping()
        self.launcher.close()
        self.persister.close()
        if self._module_logs:
            _module_logs.uninstall()
            self._module_logs = False
        back = [str(pid) for pid in handed_back]
        LOGGER.info("worker stopped; handed back %d process(es) to the queue: %s", len(back), back)
        if lost:
            marked = "marked lost in their records" if self.launcher.records is not None else "records are off"
            LOGGER.warning(
                "could not hand back %d process(es), not persisted (%s): %s", len(lost), marked, [str(p) for p in lost]
            )
        return handed_back

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has stopped (True): :meth:`stop` was called, or it recycled itself after
        ``max_processes``; False once ``timeout`` passes."""
        return self._ended.wait(timeout)
