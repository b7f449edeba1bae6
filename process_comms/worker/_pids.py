"""A pid is used once: whether a launch or create of a pid the task names may run (see RELIABILITY.md).

A launch or create names its pid when the caller chose it (``init_kwargs={"pid": ...}``, ``process-comms
launch --pid``), or when a persisted launch derives it from its task's correlation id (launcher.py). That
pid is *used* if this worker holds a process of it, the store has its record, or it has a checkpoint (the
only trace with records off). A used pid is refused with :class:`~process_comms.errors.DuplicatePid` and
nothing of its record or checkpoint changes, unless the task is the *same task* delivered again:

* the record names the task that launched the pid (``task_id``: the AMQP correlation id, new for every
  task a client sends and kept when the broker redelivers it), so an equal id is the same task (its worker
  died, or handed it back) and another id is a new launch, even if that one is a redelivery too;
* with no id to compare (records off, a record from an older release, a task without a correlation id),
  the broker's ``redelivered`` flag decides.

A kill request for a pid no worker has run (records_service.py) becomes the record of a process killed
before it ran, and the task is dropped (tests/worker/test_queued_kill.py). Two launches of one new pid at once on one
worker run one process (the other is refused). On two workers, both may pass the check before either has
written a record: a persisted one then waits for the other's claim and finds its checkpoint (refused); two
runs of a pid that is not persisted are not prevented (the check reads the store, it does not lock it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import NamedTuple, cast

from ..errors import DuplicatePid, RemoteError
from ..transports.base import host_info
from ..wire.messages import RECORD_TASK_ID_KEY, TERMINAL_STATES, LaunchOptions, Pid, is_kill_request
from ._link import CommLink
from .persistence import Persister
from .process import KilledError, Process
from .records import in_executor

__all__ = ["KILLED_BEFORE_RUN", "PidUse", "Pids", "answer_from_record", "refuse"]

LOGGER = logging.getLogger("process_comms.worker.launcher")  # the worker's log lines keep their logger name

#: The status of a process whose task was dropped because a kill was requested before a worker ran it.
KILLED_BEFORE_RUN = "killed before a worker ran it"


class PidUse(NamedTuple):
    """What a launch of a pid found: a new pid (``again`` False), or the same task's earlier run (held here,
    or its record)."""

    again: bool
    record: dict[str, object] | None = None
    proc: Process | None = None


_NEW = PidUse(False)


class TaskContext(NamedTuple):
    """What a handler needs beyond plumpy's arguments: the link to the communicator the task came from, the
    task's hold (its ack waits for it), who the task is (its correlation id, and whether the broker delivered
    it before: the same task, below) and our options of a launch or create (label, time limit,
    wire/messages.py)."""

    link: CommLink | None
    hold: concurrent.futures.Future[None] | None
    task_id: str | None = None
    redelivered: bool = False
    options: LaunchOptions = LaunchOptions()


def _same_task(task_id: object, context: TaskContext) -> bool:
    if isinstance(task_id, str) and context.task_id is not None:
        return task_id == context.task_id
    return context.redelivered


def refuse(pid: Pid, what: str) -> DuplicatePid:
    """The error of a task that names a used pid (``what`` says how it is used)."""
    return DuplicatePid(
        f"process {pid} already exists ({what}): a pid is used once, so this task was refused and the "
        "process is unchanged; continue a persisted process with continue_process, or launch with a new pid"
    )


class Pids:
    """Vets the pids that launches and creates name (``held``: the launcher's processes, live or ending)."""

    def __init__(self, store: Persister | None, keeps: bool, held: Callable[[Pid], Process | None]) -> None:
        self.store = store
        self.keeps = keeps
        self.held = held
        #: pids whose launch is between its check and its start here
        self.launching: set[str] = set()

    async def vet(self, pid: Pid, context: TaskContext, cls: type, inputs: object) -> PidUse:
        """Whether a launch (or create) of ``pid`` by the task ``context`` describes may run: a new pid, or the
        same task again; raises DuplicatePid for a used pid, KilledError for one killed before it ran."""
        held = self.held(pid)
        if held is not None:
            if _same_task(held.task_id, context):
                return PidUse(True, None, held)
            raise refuse(pid, f"{held.state.value} on this worker")
        key = str(pid)
        if key in self.launching:  # another launch of it is between this check and its start here
            raise refuse(pid, "being launched on this worker")
        task = asyncio.current_task()  # the launch's own task: held() answers for the pid once it started
        if task is not None:
            self.launching.add(key)
            task.add_done_callback(lambda _: self.launching.discard(key))
        store = self.store
        if store is None:  # a worker without a store keeps nothing of ended processes: nothing to check
            return _NEW
        keeps = self.keeps

        def traces() -> tuple[
            dict[str, object] | None, bool
        ]:  # one thread hop for both reads: launches with a pid pay it
            record = store.load_record(pid) if keeps else None
            return record, record is None and bool(store.get_process_checkpoints(pid))

        record, checkpointed = await in_executor(traces)
        if isinstance(record, dict):
            if is_kill_request(record):
                await self._drop_killed(store, pid, record, cls, inputs, context.task_id)
            if not _same_task(record.get(RECORD_TASK_ID_KEY), context):
                raise refuse(pid, f"its record says {record.get('state_name') or 'nothing'}")
            if record.get("state_name") == "killed":  # an orphan killed after its worker died: never run again
                raise KilledError(str(record.get("status") or "killed"))
            return PidUse(True, record)
        if checkpointed:
            if context.redelivered:
                return PidUse(True)
            raise refuse(pid, "it has a checkpoint")
        return _NEW

    @staticmethod
    async def _drop_killed(
        store: Persister, pid: Pid, request: dict[str, object], cls: type, inputs: object, task_id: str | None
    ) -> None:
        """Record the process of a kill request as killed before it ran (with the task's class and inputs), and
        raise KilledError: its task is dropped."""
        now = time.time()
        text = str(request.get("status") or KILLED_BEFORE_RUN)
        history = [h for h in cast("list[object]", request.get("history") or ()) if isinstance(h, dict)]
        record = {
            "pid": pid,
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "inputs": inputs if isinstance(inputs, dict) else {},
            "state_name": "killed",
            "paused": False,
            "status": text,
            "progress": {},
            "outputs": None,
            "exception": None,
            "history": [*history, {"event": "killed", "time": now, "message": f"its task was dropped: {text}"}],
            "host": host_info(),
            "persisted": False,
            "ctime": request.get("ctime") or now,
            "mtime": now,
            RECORD_TASK_ID_KEY: task_id,
        }
        await in_executor(store.delete_records, [pid])  # a store keeps a pid's first inputs: the request's would stay
        await in_executor(store.save_records, [record])
        LOGGER.info("task of process %s dropped: a kill was requested before it ran (%s)", pid, text)
        raise KilledError(text)


def answer_from_record(pid: Pid, record: dict[str, object]) -> dict[str, object] | None:
    """What the first run of a task answered, from its record if it ended (its outputs, or the error it
    raised); None if it had not ended (its worker died while it ran)."""
    state = record.get("state_name")
    if state not in TERMINAL_STATES:
        return None
    if state == "killed":
        raise KilledError(str(record.get("status") or "killed"))
    if state == "excepted":
        exception = record.get("exception")
        info: dict[str, object] = exception if isinstance(exception, dict) else {}
        message = str(info.get("message") or f"process {pid} excepted")
        raise RemoteError(message, cast("str | None", info.get("type")), cast("str | None", info.get("traceback")))
    outputs = record.get("outputs")
    return dict(outputs) if isinstance(outputs, dict) else {}
