"""``process-comms watch``: print state changes as they happen, of all processes or of PIDs.

Each line is ``<time> <pid> <class> <from> -> <to>``: the local time the broadcast arrived (to the
millisecond) and the process's class, asked once per pid with a status call (``-`` if nobody answers).
"""

from __future__ import annotations

import argparse
import datetime
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..client.thread_controller import RemoteProcessThreadController
from ..transports.base import BroadcastFilter
from ..wire.messages import state_transition
from ._common import GRACE, connect_from, is_tty, parse_pid, unique_pids
from ._output import PROG
from .base import EXIT_OK, EXIT_TIMEOUT, CliError, add_command, int_at_least, positive_float

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]

#: Seconds the class of a pid is waited for (the events behind it wait in order meanwhile).
CLASS_TIMEOUT = 2.0


def register(subparsers: SubParsers) -> None:
    """Add ``watch`` and its options."""
    p = add_command(
        subparsers,
        "watch",
        "print state changes as they happen ('<time> <pid> <class> <from> -> <to>'), of all or PIDs",
    )
    p.add_argument("pids", metavar="PID", nargs="*")
    p.add_argument("--count", metavar="N", type=int_at_least(1), help="stop after N events (bounded by --timeout)")
    p.add_argument("--seconds", metavar="S", type=positive_float, help="stop after S seconds")
    p.set_defaults(run=run)


class _LoopSafe:
    """Runs a subscriber on the communicator's loop (it only enqueues), so events keep their order."""

    loop_safe = True

    def __init__(self, subscriber: Callable[..., object]) -> None:
        self._subscriber = subscriber

    def __call__(self, *args: object) -> object:
        return self._subscriber(*args)


class _Classes:
    """The class of each pid, asked once with a status call; a pid that did not answer is asked once more."""

    def __init__(self, controller: RemoteProcessThreadController, timeout: float) -> None:
        self._controller = controller
        self._timeout = timeout
        self._known: dict[str, str] = {}
        self._asked: set[str] = set()

    def __call__(self, pid: str) -> str:
        if pid not in self._known:
            try:
                status = self._controller.get_status(parse_pid(pid), self._timeout).result(self._timeout + GRACE)
                self._known[pid] = str(status.get("class") or "-") if isinstance(status, dict) else "-"
            except Exception:  # noqa: BLE001 - any failure only leaves the class unknown
                if pid in self._asked:
                    self._known[pid] = "-"
                self._asked.add(pid)
                return "-"
        return self._known[pid]


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print state changes as they happen, one line each, until --count events, --seconds, or Ctrl-C."""
    wanted = {key for key, _ in unique_pids(args.pids)}
    # SimpleQueue: put() never takes a lock that Ctrl-C could leave held in the main thread's get(), so the
    # loop thread delivering events can never block on it (with queue.Queue, close() then waited in vain)
    events: queue.SimpleQueue[tuple[float, str, str, str]] = queue.SimpleQueue()

    def on_event(_comm: object, _body: object, sender: object, subject: object, _cid: object) -> None:
        transition = state_transition(subject)
        if transition is None or (wanted and str(sender) not in wanted):
            return
        before, after = transition
        events.put((time.time(), str(sender), "-" if before == "None" else before, after))

    count: int | None = args.count
    seconds: float | None = args.seconds
    # --count alone is still bounded (by --timeout); with neither, watch until Ctrl-C
    limit = seconds if seconds is not None else (ctx.timeout if count is not None else None)
    seen = 0
    with connect_from(ctx) as comm:
        comm.add_broadcast_subscriber(_LoopSafe(BroadcastFilter(on_event, subject="state_changed.*")))
        class_of = _Classes(RemoteProcessThreadController(comm), min(ctx.timeout, CLASS_TIMEOUT))
        if is_tty(ctx.err):
            ctx.err.write(f"{PROG}: watching state changes (Ctrl-C to stop)\n")
        deadline = None if limit is None else time.monotonic() + limit
        try:
            while count is None or seen < count:
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    break
                try:
                    stamp, pid, old, new = events.get(timeout=wait)
                except queue.Empty:
                    continue
                seen += 1
                when = datetime.datetime.fromtimestamp(stamp).astimezone()
                cls = class_of(pid)
                if ctx.json:
                    ctx.print_json(
                        {
                            "time": when.isoformat(timespec="milliseconds"),
                            "pid": pid,
                            "class": cls,
                            "from": old,
                            "to": new,
                        }
                    )
                else:
                    ctx.print(
                        f"{when.replace(tzinfo=None).isoformat(timespec='milliseconds')} {pid} {cls} {old} -> {new}"
                    )
        except KeyboardInterrupt:
            return EXIT_OK
    if count is not None and seen < count and seconds is None:
        raise CliError(f"saw {seen} of {count} state changes within {ctx.timeout:g} s", EXIT_TIMEOUT)
    return EXIT_OK
