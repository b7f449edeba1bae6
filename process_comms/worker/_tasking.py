"""What the launcher keeps per task beside plumpy's hook arguments, and how it logs a process's end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

from ..transports.base import CURRENT_DELIVERY, AsyncCommunicator, Delivery
from ..wire.launch_options import LaunchOptions

if TYPE_CHECKING:
    from .process import Process

__all__ = ["LAUNCH_PID_NAMESPACE", "_EXTRAS", "_TaskExtras", "_log_end", "_release", "hold_for", "task_identity"]

LOGGER = logging.getLogger("process_comms.worker.launcher")  # the worker's log lines keep their logger name

#: Namespace of the pids derived from a launch task's correlation id (same task, same pid).
LAUNCH_PID_NAMESPACE = uuid.UUID("6f1c2a4e-3b5d-4c2a-9e1f-0d7b8a9c6e21")


class _TaskExtras(NamedTuple):
    """What a hook needs beyond plumpy's arguments: the async core, its loop, the task's hold, and who the
    task is (its correlation id, and whether the broker delivered it before: worker/_pids.py)."""

    core: AsyncCommunicator | None
    comm_loop: asyncio.AbstractEventLoop | None
    hold: concurrent.futures.Future[Any] | None
    task_id: str | None = None
    redelivered: bool = False
    #: Our options of a launch or create (label, time limit), read beside plumpy's args (wire/launch_options.py).
    options: LaunchOptions = LaunchOptions()


#: The extras of the task whose hook runs in this context (set by ``ProcessLauncher._hook``).
_EXTRAS: contextvars.ContextVar[_TaskExtras | None] = contextvars.ContextVar("_EXTRAS", default=None)


def _release(hold: concurrent.futures.Future[Any] | None) -> None:
    if hold is not None and not hold.done():
        hold.set_result(None)


def hold_for(wanted: bool) -> concurrent.futures.Future[Any] | None:
    """For a persisted process answered at once (nowait): keep its task until the process ends."""
    delivery = CURRENT_DELIVERY.get()
    if not wanted or delivery is None:
        return None
    delivery.hold = concurrent.futures.Future()
    return delivery.hold


def task_identity(delivery: Delivery | None) -> tuple[str | None, bool]:
    """Who a delivered task is: its correlation id and whether the broker delivered it before (_pids.py)."""
    return (None, False) if delivery is None else (delivery.correlation_id, delivery.redelivered)


def _log_end(proc: Process, seconds: float) -> None:
    """The worker's INFO line for a process that ended here (an exception with its traceback)."""
    state = proc.state.value if proc.state.terminal else f"{proc.state.value}, handed back"
    info = proc._exception_info if proc.state.value == "excepted" else None
    if info is not None:  # the frames under the one-line error (no "Traceback" header: that marks a worker crash)
        frames = str(info.get("traceback") or "").rstrip().splitlines()[1:-1]
        error = f"{info.get('type')}: {info.get('message')}"
        LOGGER.info("process %s ended: excepted after %.3f s: %s\n%s", proc.pid, seconds, error, "\n".join(frames))
    else:
        LOGGER.info("process %s ended: %s after %.3f s", proc.pid, state, seconds)
