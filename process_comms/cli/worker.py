"""``process-comms worker``: run a worker that takes tasks until SIGTERM/SIGINT, then stops gracefully."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, TypedDict

from ..errors import LoadError
from ..transports.rmq._topology import QUEUE_TYPES
from ..urls import mask_url
from ..wire.loaders import AllowListLoader
from ..wire.types import DEFAULT_QUEUE
from ..worker.persistence import MEMORY_RECORD_BYTES
from ..worker.worker import Worker
from ._output import setup_logging
from .base import EXIT_OK, EXIT_USAGE, CliError, add_command, int_at_least

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["parse_queue", "queues_of", "register", "run"]


def parse_queue(text: str) -> tuple[str, int | None]:
    """An argparse type for ``--queue``: ``NAME`` or ``NAME=SLOTS`` (slots: an integer of 0 or more)."""
    name, sep, slots = text.partition("=")
    name = name.strip()
    if not name or any(ch in name for ch in "#* ,"):
        raise argparse.ArgumentTypeError(f"not a queue name: {text!r} (use NAME or NAME=SLOTS, e.g. gpu=4)")
    if not sep:
        return name, None
    try:
        value = int(slots)
    except ValueError:
        raise argparse.ArgumentTypeError(f"slots must be an integer: {text!r} (e.g. gpu=4)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"slots must be 0 or more: {text!r}")
    return name, value


def queues_of(
    queues: Sequence[tuple[str, int | None]] | None, slots: int | None, prefetch: int
) -> dict[str, int] | None:
    """``{queue: slots}`` from ``--queue``/``--slots``/``--prefetch`` (None: today's single default queue)."""
    default_slots = prefetch if slots is None else slots
    if not queues:
        return None if slots is None else {DEFAULT_QUEUE: slots}
    chosen: dict[str, int] = {}
    for name, own in queues:
        if name in chosen:
            raise CliError(f"--queue {name} is given twice", EXIT_USAGE)
        chosen[name] = default_slots if own is None else own
    return chosen


def _check_allowed(modules: Sequence[str]) -> None:
    """Import each ``--allow`` module before taking tasks: one that cannot be imported would reject every task."""
    for module in modules:
        try:
            AllowListLoader([module]).check_modules()
        except LoadError as exc:
            raise CliError(f"--allow {module}: {exc}; the worker did not start", EXIT_USAGE) from None


class _QueueType(TypedDict, total=False):
    task_queue_type: str


def _queue_type(args: argparse.Namespace) -> _QueueType:
    """``task_queue_type`` for ``connect()``: --task-queue-type, else the profile's, else the library's default."""
    return {"task_queue_type": args.task_queue_type} if args.task_queue_type else {}


def register(subparsers: SubParsers) -> None:
    """Add ``worker`` and its options."""
    p = add_command(subparsers, "worker", "run a worker that takes tasks until SIGTERM/SIGINT (then stops gracefully)")
    p.add_argument(
        "--persister",
        metavar="URL",
        help="sqlite:///file.db, postgresql://user@host/db or memory:// (default: the profile's store)",
    )
    p.add_argument(
        "--allow",
        metavar="MODULE",
        action="append",
        required=True,
        help=(
            "module whose Process subclasses this worker may run (and its submodules), "
            "imported from sys.path or the current directory; repeatable"
        ),
    )
    p.add_argument("--prefetch", metavar="N", type=int_at_least(0), default=0, help="tasks taken at once (0: no limit)")
    p.add_argument(
        "--queue",
        metavar="NAME[=SLOTS]",
        dest="queues",
        type=parse_queue,
        action="append",
        help=(
            "consume the task queue NAME ('default': the installation's task queue), with at most SLOTS of its "
            "tasks in progress here (without =SLOTS: --slots); repeatable, e.g. --queue gpu=4 --queue default. "
            "Without --queue: the default queue only"
        ),
    )
    p.add_argument(
        "--slots",
        metavar="N",
        type=int_at_least(0),
        help="slots of each --queue given without =SLOTS (default: --prefetch; 0: no limit)",
    )
    p.add_argument(
        "--claim-ttl",
        metavar="S",
        type=float,
        default=30.0,
        help=(
            "seconds after its last renewal that this worker takes over a process claimed by a worker whose "
            "liveness the broker cannot tell (default 30); one whose broker connection is gone is taken over "
            "within seconds, one whose connection lives is waited for"
        ),
    )
    p.add_argument(
        "--max-processes",
        metavar="N",
        type=int_at_least(0),
        default=0,
        help=(
            "recycle this worker: after N processes it takes no more tasks (those delivered meanwhile go back to "
            "the queue) and exits (code 0) once they have ended, so that its supervisor (process-comms daemon) "
            "starts a fresh one and the memory a peak left behind goes back (default 0: no limit)"
        ),
    )
    p.add_argument(
        "--records",
        choices=("on", "off"),
        default="on",
        help=(
            "keep a record of every process run here (default on): 'off' keeps none and this worker answers no "
            f"record query (list, show, report); a memory:// store keeps at most {MEMORY_RECORD_BYTES >> 20} MiB "
            "of them (memory://?max_record_bytes=N to change it)"
        ),
    )
    p.add_argument(
        "--task-queue-type",
        choices=QUEUE_TYPES,
        help=(
            "the type the task queue is declared with when this worker creates it (default: the profile's "
            "task_queue_type, else classic); a queue that exists keeps its type"
        ),
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log level on stderr (default INFO)",
    )
    p.set_defaults(run=run)


#: Seconds between two looks at a worker that may stop by itself (--max-processes) while waiting for a signal.
_STOP_LOOK = 0.25


def _wait_for_stop(worker: Worker, signals: set[signal.Signals], stop_event: threading.Event | None) -> int | None:
    """The stop signal received (blocked signals, or ``stop_event`` set by their handlers), or None once the
    worker stopped by itself (it recycled itself after --max-processes)."""
    while not worker.wait(0):
        if stop_event is None:
            info = signal.sigtimedwait(signals, _STOP_LOOK)
            # only a signal asked for: after a SIGSTOP/SIGCONT that outlasts the timeout, CPython 3.10-3.13 can
            # return a siginfo of garbage (si_signo 1 seen here) instead of None (tests/cli/test_worker_signals.py)
            if info is not None and info.si_signo in signals:
                return info.si_signo
        elif stop_event.wait(_STOP_LOOK):  # pragma: no cover - platforms without sigtimedwait
            return signal.SIGTERM
    return None


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run a worker until SIGTERM/SIGINT, then stop gracefully (running processes are handed back)."""
    queues = queues_of(args.queues, args.slots, args.prefetch)  # a usage error before anything starts
    persister = args.persister or ctx.store
    if not persister:
        raise CliError("the worker needs a store: give --persister URL or use a --profile with a store", EXIT_USAGE)
    setup_logging(args.log_level, ctx.scrub, tracebacks=True)
    if args.log_level != "DEBUG":  # the transport's chatter (reconnect notices...) only when debugging
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    if os.getcwd() not in sys.path:  # like `python -m`: allowed modules may live in the current directory
        sys.path.append(os.getcwd())
    _check_allowed(args.allow)
    log = logging.getLogger("process_comms.cli")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    use_sigwait = hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigtimedwait")
    stop_event = threading.Event()
    old_handlers: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    if use_sigwait:
        # block before any thread starts: every thread inherits the mask and only sigwait() sees the signals
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    else:  # pragma: no cover - platforms without sigwait
        for sig in stop_signals:
            old_handlers[sig] = signal.signal(sig, lambda *_: stop_event.set())
    try:
        worker = Worker(
            ctx.broker,
            queues=queues,
            persister=persister,
            allowed_modules=args.allow,
            task_prefetch_count=args.prefetch,
            claim_ttl=args.claim_ttl,
            records=args.records == "on",
            max_processes=args.max_processes or None,
            **ctx.comm_options(),
            **_queue_type(args),
        )
        try:
            worker.start()
        except BaseException:
            worker.stop(graceful=False)
            raise
        log.info(
            "worker on %s, task queue %r, queues and slots %s, allowed modules %s",
            mask_url(ctx.broker),
            ctx.task_queue,
            worker.slots(),
            list(args.allow),
        )
        ctx.print("worker ready")
        signum = _wait_for_stop(worker, stop_signals, stop_event if not use_sigwait else None)
        if signum is None:
            log.info(
                "worker recycled: its %d processes (--max-processes) have ended; exiting so that a fresh worker"
                " takes over",
                args.max_processes,
            )
            return EXIT_OK
        log.info("received %s: stopping gracefully", signal.Signals(signum).name)
        worker.stop(graceful=True)  # logs what it handed back and what it could not
        return EXIT_OK
    finally:
        if use_sigwait:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for signum_, handler in old_handlers.items():  # pragma: no cover
            signal.signal(signum_, handler)
