"""A worker that recycles itself (docs/performance.md, "Memory"): after ``max_processes`` processes it takes
no more tasks, lets
what it holds run to its end, then stops, so that its supervisor starts a fresh one and the memory the
peak left behind (pymalloc and malloc arenas: docs/performance.md, "Memory") goes back with the old one.

Celery's ``worker_max_tasks_per_child`` replaces a pool's child process while the parent keeps the broker
connection; here the worker process is both, so it exits (code 0) and ``process-comms daemon`` (circus,
``respawn``) starts the next. The order, all on the communicator's loop:

1. the N-th launch or continue task taken: the worker's task consumers are cancelled, so the queue's other
   workers take the next tasks;
2. a task delivered meanwhile (prefetched before the cancel) is handed back (:class:`HandBack`: requeued,
   however often it was delivered), never started;
3. once every task taken is settled (acked, its reply sent) and every process started here has ended, the
   worker stops gracefully (on a thread of its own: the stop waits on this loop).

A graceful stop meanwhile (SIGTERM) wins: :meth:`Recycler.cancel` ends the wait, and that stop checkpoints
and hands back what still runs, as any graceful stop does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..transports.base import CURRENT_DELIVERY, AsyncCommunicator, Delivery, HandBack
from ..transports.loop import run_on
from ..wire.messages import CONTINUE_TASK, LAUNCH_TASK, TASK_KEY
from .launcher import Accepted, Answer, ProcessLauncher

__all__ = ["Recycler"]

LOGGER = logging.getLogger("process_comms.worker")


class Recycler:
    """The launcher as a task subscriber that takes ``limit`` processes, then retires: ``done()`` is called
    (on a new thread) once they have all ended; see the module's docstring for the order."""

    #: Called on the communicator's loop directly, as the launcher it wraps.
    loop_safe = True

    def __init__(self, launcher: ProcessLauncher, limit: int, done: Callable[[], Any]) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"max_processes must be a positive integer (or None: no limit), not {limit!r}")
        self.launcher, self.limit, self._done = launcher, limit, done
        #: Launch and continue tasks taken here; tasks handed back since the limit was reached.
        self.taken = 0
        self.handed_back = 0
        self._settling: set[asyncio.Task[Any]] = set()  # the tasks settling the deliveries taken here
        self._subscriptions: list[tuple[AsyncCommunicator, Any, str]] = []
        self._retiring: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelled = False
        self._lock = threading.Lock()  # the subscriptions and the retiring task: noted from the worker's thread

    @property
    def full(self) -> bool:
        """True once ``limit`` processes were taken: every further task is handed back."""
        return self.taken >= self.limit

    def subscribed(self, core: AsyncCommunicator, identifier: Any, queue: str) -> None:
        """Note a task subscription of the worker's (cancelled when the limit is reached). From the worker's
        thread: tasks may be delivered, and the limit reached, before the subscription's identifier is back
        here; then it is cancelled at once (else its tasks would be handed back and redelivered for ever)."""
        with self._lock:
            self._subscriptions.append((core, identifier, queue))
            loop = self._loop if self._retiring is not None else None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._stop_taking(), loop)

    def __call__(self, communicator: object, task: object) -> concurrent.futures.Future[Answer]:
        return self.accept(communicator, task, CURRENT_DELIVERY.get())[0]

    def accept(self, communicator: object, task: object, delivery: Delivery | None) -> Accepted:
        """The launcher's :meth:`~ProcessLauncher.accept` until ``limit`` processes were taken, then a hand-back."""
        if self.full:
            self.handed_back += 1
            raise HandBack(f"this worker took its {self.limit} processes and is recycling itself")
        accepted = self.launcher.accept(communicator, task, delivery)  # a task refused raises: it counts for nothing
        if isinstance(task, dict) and task.get(TASK_KEY) in (LAUNCH_TASK, CONTINUE_TASK):
            self.taken += 1
        # a loop-safe subscriber is called inside the task that settles its delivery (transports/base.py,
        # settle_task): once it is done, the task is acked and its reply sent
        settling = asyncio.current_task()
        if settling is not None:
            self._settling.add(settling)
            settling.add_done_callback(self._settling.discard)
        if self.full and self._retiring is None and not self._cancelled:
            LOGGER.info(
                "worker %s took its %d processes (max_processes): taking no more tasks; it stops once they end",
                self.launcher.owner,
                self.limit,
            )
            with self._lock:
                self._loop = asyncio.get_running_loop()
                self._retiring = self._loop.create_task(self._retire())
        return accepted

    async def _retire(self) -> None:
        await asyncio.shield(self._stop_taking())  # a stop meanwhile (cancel) ends the wait below, not this
        while self._settling:
            await asyncio.wait(list(self._settling))
        # processes answered at once (a nowait launch, not persisted) hold no task: they end here too
        await asyncio.wrap_future(run_on(self.launcher.loop, self._processes_ended))
        LOGGER.info(
            "worker %s recycles itself: its %d processes ended (%d task(s) handed back); stopping",
            self.launcher.owner,
            self.taken,
            self.handed_back,
        )
        threading.Thread(target=self._done, name="process-comms-recycle").start()

    async def _stop_taking(self) -> None:
        """Cancel every subscription noted so far (each once)."""
        while True:
            with self._lock:
                if not self._subscriptions:
                    return
                core, identifier, queue = self._subscriptions.pop(0)
            try:
                await core.remove_task_subscriber(identifier, queue=queue)
            except Exception:  # its tasks are handed back all the same
                LOGGER.warning("could not stop consuming task queue %r", queue, exc_info=True)

    async def _processes_ended(self) -> None:
        """On the launcher's loop: until no process runs here."""
        while self.launcher.processes:
            await asyncio.wait([proc.wait_done() for proc in self.launcher.processes.values()])

    def cancel(self) -> None:
        """A graceful stop came first: stop waiting (from any thread; idempotent)."""
        self._cancelled = True
        task, loop = self._retiring, self._loop
        if task is not None and loop is not None and not task.done():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the task went with it
                pass
