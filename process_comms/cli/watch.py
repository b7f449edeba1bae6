"""``process-comms watch``: print state changes as they happen, of all processes or of PIDs."""

from __future__ import annotations

import argparse
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..transports.base import BroadcastFilter
from ..wire.messages import state_transition
from ._common import connect_from, is_tty, unique_pids
from .main import EXIT_OK, EXIT_TIMEOUT, PROG, CliError, add_command, int_at_least, positive_float

if TYPE_CHECKING:
    from ._common import Context, SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``watch`` and its options."""
    p = add_command(
        subparsers, "watch", "print state changes as they happen ('<pid> <from> -> <to>'), of all processes or PIDs"
    )
    p.add_argument("pids", metavar="PID", nargs="*")
    p.add_argument("--count", metavar="N", type=int_at_least(1), help="stop after N events (bounded by --timeout)")
    p.add_argument("--seconds", metavar="S", type=positive_float, help="stop after S seconds")
    p.set_defaults(run=run)


class _LoopSafe:
    """Runs a subscriber on the communicator's loop (it only enqueues), so events keep their order."""

    loop_safe = True

    def __init__(self, subscriber: Callable[..., Any]) -> None:
        self._subscriber = subscriber

    def __call__(self, *args: Any) -> Any:
        return self._subscriber(*args)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print state changes as they happen, one line each, until --count events, --seconds, or Ctrl-C."""
    wanted = {key for key, _ in unique_pids(args.pids)}
    # SimpleQueue: put() never takes a lock that Ctrl-C could leave held in the main thread's get(), so the
    # loop thread delivering events can never block on it (with queue.Queue, close() then waited in vain)
    events: queue.SimpleQueue[tuple[str, str, str]] = queue.SimpleQueue()

    def on_event(_comm: Any, _body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        transition = state_transition(subject)
        if transition is None or (wanted and str(sender) not in wanted):
            return
        before, after = transition
        events.put((str(sender), "-" if before == "None" else before, after))

    count: int | None = args.count
    seconds: float | None = args.seconds
    # --count alone is still bounded (by --timeout); with neither, watch until Ctrl-C
    limit = seconds if seconds is not None else (ctx.timeout if count is not None else None)
    seen = 0
    with connect_from(ctx) as comm:
        comm.add_broadcast_subscriber(_LoopSafe(BroadcastFilter(on_event, subject="state_changed.*")))
        if is_tty(ctx.err):
            ctx.err.write(f"{PROG}: watching state changes (Ctrl-C to stop)\n")
        deadline = None if limit is None else time.monotonic() + limit
        try:
            while count is None or seen < count:
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    break
                try:
                    pid, old, new = events.get(timeout=wait)
                except queue.Empty:
                    continue
                seen += 1
                if ctx.json:
                    ctx.print_json({"pid": pid, "from": old, "to": new})
                else:
                    ctx.print(f"{pid} {old} -> {new}")
        except KeyboardInterrupt:
            return EXIT_OK
    if count is not None and seen < count and seconds is None:
        raise CliError(f"saw {seen} of {count} state changes within {ctx.timeout:g} s", EXIT_TIMEOUT)
    return EXIT_OK
