"""What the launcher keeps per task beside plumpy's hook arguments, and how it logs a process's end."""

from __future__ import annotations

import concurrent.futures
import logging
import uuid
from typing import NamedTuple

from ..transports.base import Delivery
from ..wire.messages import LaunchOptions, Pid
from ._link import CommLink
from .process import Process

__all__ = ["LAUNCH_PID_NAMESPACE", "TaskContext", "hold_for", "log_end", "release", "task_identity"]

LOGGER = logging.getLogger("process_comms.worker.launcher")  # the worker's log lines keep their logger name

#: Namespace of the pids derived from a launch task's correlation id (same task, same pid).
LAUNCH_PID_NAMESPACE = uuid.UUID("6f1c2a4e-3b5d-4c2a-9e1f-0d7b8a9c6e21")


class TaskContext(NamedTuple):
    """What a handler needs beyond plumpy's arguments: the link to the communicator the task came from, the
    task's hold (its ack waits for it), and who the task is (its correlation id, and whether the broker
    delivered it before: worker/_pids.py)."""

    link: CommLink | None
    hold: concurrent.futures.Future[None] | None
    task_id: str | None = None
    redelivered: bool = False
    #: Our options of a launch or create (label, time limit), read beside plumpy's args (wire/launch_options.py).
    options: LaunchOptions = LaunchOptions()

    def fresh(self, pid: Pid) -> bool:
        """True for the pid a persisted launch derived from its task at its first delivery: new by construction."""
        return (
            not self.redelivered and self.task_id is not None and pid == uuid.uuid5(LAUNCH_PID_NAMESPACE, self.task_id)
        )


def release(hold: concurrent.futures.Future[None] | None) -> None:
    """Let the task of ``hold`` be acked (its process ended, or its launch failed)."""
    if hold is not None and not hold.done():
        hold.set_result(None)


def hold_for(delivery: Delivery | None, wanted: bool) -> concurrent.futures.Future[None] | None:
    """For a persisted process answered at once (nowait): keep its task until the process ends. The hold is
    handed to the transport on ``delivery`` (it acks the task once the hold completes) and returned."""
    if not wanted or delivery is None:
        return None
    hold: concurrent.futures.Future[None] = concurrent.futures.Future()
    delivery.hold = hold
    return hold


def task_identity(delivery: Delivery | None) -> tuple[str | None, bool]:
    """Who a delivered task is: its correlation id and whether the broker delivered it before (_pids.py)."""
    return (None, False) if delivery is None else (delivery.correlation_id, delivery.redelivered)


def log_end(proc: Process, seconds: float) -> None:
    """The worker's INFO line for a process that ended here (an exception with its traceback)."""
    state = proc.state.value if proc.state.terminal else f"{proc.state.value}, handed back"
    info = proc.exception_info if proc.state.value == "excepted" else None
    if info is not None:  # the frames under the one-line error (no "Traceback" header: that marks a worker crash)
        frames = str(info.get("traceback") or "").rstrip().splitlines()[1:-1]
        error = f"{info.get('type')}: {info.get('message')}"
        LOGGER.info("process %s ended: excepted after %.3f s: %s\n%s", proc.pid, seconds, error, "\n".join(frames))
    else:
        LOGGER.info("process %s ended: %s after %.3f s", proc.pid, state, seconds)
