"""What several commands share: the context built from the global options, the connection, pids, output."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO, TypedDict, TypeVar

from .. import defaults
from ..client.display import Progress
from ..client.futures import wait_all
from ..errors import InvalidPid, ProcessUnreachable
from ..transports.base import routing_id
from ..transports.connect import connect
from ..transports.threaded import ThreadCommunicator
from ..urls import mask_url
from ..wire.messages import Pid
from ..wire.messages import parse_pid as _parse_pid
from ._output import PROG, Scrubber, print_error
from .base import EXIT_BROKER, EXIT_OK, EXIT_USAGE, CliError, describe, exit_code_for

if TYPE_CHECKING:
    from ..client.records import RecordStore

__all__ = [
    "GRACE",
    "Context",
    "add_store_option",
    "connect_from",
    "from_store",
    "is_tty",
    "parse_pid",
    "record_store",
    "report",
    "unique_pids",
    "wait_many",
]

#: Extra seconds the command waits beyond --timeout, so the library's own typed deadline fires first.
GRACE = 2.0

#: Characters in the progress bar ``wait_many`` draws on a terminal.
_BAR_WIDTH = 20


T = TypeVar("T")


class CommOptions(TypedDict):
    """The exchange and queue names and the connect deadline, as :func:`process_comms.connect` takes them."""

    message_exchange: str
    task_exchange: str
    task_queue: str
    connect_timeout: float


def _json_default(value: object) -> object:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


@dataclass
class Context:
    """What every command needs: the parsed arguments, the broker URL and the output channels."""

    args: argparse.Namespace
    broker: str
    scrub: Scrubber
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    #: The whole command's parser, for the commands that describe the command line (``completion``).
    parser: argparse.ArgumentParser | None = None

    @property
    def json(self) -> bool:
        """True with --json."""
        return bool(self.args.json)

    @property
    def timeout(self) -> float:
        """Seconds any wait may last (--timeout)."""
        return float(self.args.timeout)

    @property
    def store(self) -> str | None:
        """The store URL: ``--store``, else the profile's (``store = ...``), if either names one."""
        store: str | None = self.args.store  # set for every command: base.add_command, config.apply_profile
        return store or None

    @property
    def task_queue(self) -> str:
        """The task queue's name: --task-queue, else the task exchange's name (as the library does)."""
        return str(self.args.task_queue or self.args.task_exchange)

    def comm_options(self) -> CommOptions:
        """Exchange and queue names for :func:`process_comms.connect`."""
        return {
            "message_exchange": str(self.args.message_exchange),
            "task_exchange": str(self.args.task_exchange),
            "task_queue": self.task_queue,
            "connect_timeout": min(self.timeout, defaults.CONNECT_TIMEOUT),
        }

    def print(self, text: str) -> None:
        """One line on stdout (flushed: others may be reading it line by line)."""
        print(text, file=self.out, flush=True)

    def print_json(self, value: object) -> None:
        """``value`` as one line of JSON on stdout."""
        self.print(json.dumps(value, default=_json_default, sort_keys=True))

    def error(self, message: str) -> None:
        """One error line on stderr, password scrubbed."""
        print_error(message, self.scrub, self.err)

    def warn(self, message: str) -> None:
        """One warning line on stderr."""
        print(f"{PROG}: warning: {self.scrub(message)}", file=self.err, flush=True)


def connect_from(ctx: Context) -> ThreadCommunicator:
    """A connected communicator with the global options' names and deadlines."""
    try:
        return connect(ctx.broker, rpc_timeout=ctx.timeout, task_timeout=ctx.timeout, **ctx.comm_options())
    except (TimeoutError, concurrent.futures.TimeoutError):
        raise CliError(f"could not connect to {mask_url(ctx.broker)} in time", EXIT_BROKER) from None


# -- the store, read when no worker answers --------------------------------------------------------
def add_store_option(parser: argparse.ArgumentParser) -> None:
    """``--store URL``, for the commands that read process records."""
    parser.add_argument(
        "--store",
        metavar="URL",
        help="the store the workers write (their --persister): read-only, it answers when no worker does "
        "(default: the profile's store)",
    )


@contextlib.contextmanager
def record_store(ctx: Context) -> Iterator[RecordStore | None]:
    """The store named by ``--store`` or the profile, opened read-only (it connects when first read), or None."""
    if not ctx.store:
        yield None
        return
    from ..worker.persistence import open_record_store  # the reader of the store the workers write

    store = open_record_store(ctx.store, timeout=ctx.timeout)
    try:
        yield store
    finally:
        store.close()


def from_store(ctx: Context, reason: object) -> str:
    """The line saying that an answer was read from the store, and why."""
    return f"from the store {mask_url(ctx.store or '')}: {reason or 'no worker answered'}"


# -- pids ------------------------------------------------------------------------------------------
def parse_pid(text: str) -> Pid:
    """A pid typed on the command line: a UUID, else an integer, else the text (``launch --pid job-7``).

    One that can never be a process's address (empty, ``*`` or ``#`` in it, too long) is a usage error (exit 2).
    """
    pid = _parse_pid(text)
    try:
        routing_id(pid)
    except InvalidPid as exc:
        raise CliError(f"invalid pid {text!r}: {exc}", EXIT_USAGE) from None
    return pid


def unique_pids(texts: Sequence[str]) -> list[tuple[str, Pid]]:
    """``[(display form, pid)]`` in order, without duplicates; the display form is what routing uses."""
    seen: dict[str, Pid] = {}
    for text in texts:
        pid = parse_pid(text)
        seen.setdefault(str(pid), pid)
    return list(seen.items())


# -- waiting ---------------------------------------------------------------------------------------
def is_tty(stream: TextIO) -> bool:
    """True if ``stream`` is a terminal (False for closed or fake streams)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def wait_many(
    futures: Mapping[str, concurrent.futures.Future[T]], timeout: float, progress_stream: TextIO | None = None
) -> dict[str, T | BaseException]:
    """Wait for many futures under one deadline; ``{pid: result or exception}``, with a TTY progress bar.

    Outcomes as :func:`process_comms.wait_all` gives them; what did not answer in time is then cancelled.
    """
    results: dict[str, T | BaseException]
    if progress_stream is None or len(futures) < 2 or not is_tty(progress_stream):
        results = wait_all(futures, timeout)
    else:
        bar = Progress(stream=progress_stream, width=_BAR_WIDTH, notebook=False, style="bar")
        results = bar.track(futures, timeout)
    for fut in futures.values():
        fut.cancel()  # stop waiting for what did not answer (a no-op for the others)
    return results


# -- output ----------------------------------------------------------------------------------------
def report(ctx: Context, records: list[dict[str, object]], key: str, outcome: object) -> int:
    """Add one PID's outcome to the JSON records and report a failure at once; return its exit code."""
    if isinstance(outcome, BaseException):
        text = describe(outcome)
        if isinstance(outcome, ProcessUnreachable) and isinstance(_parse_pid(key), str):
            text += " (read as a text pid: it is neither a UUID nor an integer)"
        records.append(
            {
                "pid": key,
                "ok": False,
                "error": text,
                "error_type": type(outcome).__name__,
                "exit_code": exit_code_for(outcome),
            }
        )
        ctx.error(text)
        return exit_code_for(outcome)
    records.append({"pid": key, "ok": True, "result": outcome})
    return EXIT_OK
