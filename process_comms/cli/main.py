"""The ``process-comms`` command: run a worker, launch processes and control them from a shell.

Synopsis::

    process-comms [--profile P] [--broker URL] [--json] [--timeout S] [--prefix NAME]
                  [--message-exchange N] [--task-exchange N] [--task-queue N] COMMAND ...
    process-comms --version

    process-comms worker [--persister URL] --allow MODULE [--allow MODULE ...] [--prefetch N] [--claim-ttl S]
                         [--task-queue-type classic|quorum] [--log-level LEVEL]
    process-comms launch CLASS [--inputs JSON] [--nowait] [--persist]
    process-comms status PID...
    process-comms list [--state S] [--limit N] [--since D] [--class CLASS]
    process-comms show PID...
    process-comms report PID [--follow]
    process-comms pause (PID... | --all) [--message TEXT]
    process-comms play  (PID... | --all)
    process-comms kill  (PID... | --all) [--force] [--message TEXT]
    process-comms watch [PID...] [--count N] [--seconds S]
    process-comms queue
    process-comms completion bash|zsh|fish

The broker URL comes from ``--broker``, the profile or the environment variable ``PROCESS_COMMS_BROKER``;
its password is never printed. A profile (``--profile P`` or ``PROCESS_COMMS_PROFILE``) is a named set of
global options in ``$XDG_CONFIG_HOME/process-comms/config.toml`` (see :mod:`.config`); an option given on
the command line beats it. ``--prefix NAME`` names the exchanges and the task queue ``NAME.messages``,
``NAME.tasks`` and ``NAME.process.queue``. The global options may also follow the command. Every wait is
bounded by ``--timeout`` (default 30 s), except ``worker`` (runs until SIGTERM/SIGINT) and ``watch`` without
``--count``/``--seconds`` (runs until Ctrl-C). Output is for humans by default; ``--json`` prints JSON
(pids as strings). Errors are one line on stderr: ``process-comms: error: ...``.

Exit codes:
  0  ok
  1  generic error (including a task queue that does not exist, for `queue`)
  2  usage error (bad arguments, no broker URL, an invalid pid: empty, with * or #, or too long;
     a `worker --allow` module that cannot be imported)
  3  unreachable pid: no worker holds the process (ProcessUnreachable)
  4  timeout: no answer within --timeout (TimeoutError); the remote action may still happen
     (`launch` names the pid it sent)
  5  rejected: the worker refused the task, e.g. a class it does not allow (TaskRejected)
  6  broker unavailable: unreachable, refused the credentials, or the connection was lost
  7  remote failure: the process excepted or was killed (RemoteError, ProcessKilled)
  130 interrupted (Ctrl-C), except for `watch`, where Ctrl-C is the normal end (0)
With several PIDs every pid gets its line and the exit code is the highest of their codes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from .. import defaults
from ..errors import (
    BrokerUnavailable,
    InvalidPid,
    ProcessCommsError,
    ProcessUnreachable,
    RemoteError,
    TaskRejected,
)
from ..errors import TimeoutError as PCTimeoutError
from ..urls import mask_url, split_urls
from ._output import PROG, Scrubber, mask_urls, print_error, setup_logging

if TYPE_CHECKING:
    # the command modules import the exit codes from here, so this module imports them only when it runs
    # a command (in build_parser and main), never at import time
    from ._common import SubParsers

__all__ = [
    "EXIT_BROKER",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "add_command",
    "build_parser",
    "exit_code_for",
    "main",
    "PROG",
    "Scrubber",
    "mask_urls",
    "print_error",
    "setup_logging",
]

ENV_BROKER = "PROCESS_COMMS_BROKER"
DEFAULT_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_REJECTED = 5
EXIT_BROKER = 6
EXIT_REMOTE = 7
EXIT_INTERRUPTED = 130

_EPILOG = "exit codes:\n" + (__doc__ or "Exit codes:\n").split("Exit codes:\n", 1)[1]  # one text for both


class CliError(Exception):
    """An error the command reports in one line, with the exit code it means."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """The exit code that an exception means (see the module docstring)."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, (PCTimeoutError, TimeoutError, concurrent.futures.TimeoutError)):
        return EXIT_TIMEOUT
    if isinstance(exc, ProcessUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, TaskRejected):
        return EXIT_REJECTED
    if isinstance(exc, BrokerUnavailable):  # also ConnectionLost
        return EXIT_BROKER
    if isinstance(exc, RemoteError):  # also ProcessKilled
        return EXIT_REMOTE
    if isinstance(exc, InvalidPid):
        return EXIT_USAGE
    return EXIT_ERROR


def describe(exc: BaseException) -> str:
    """One line saying what went wrong."""
    if isinstance(exc, (ProcessCommsError, CliError)):
        text = str(exc) or type(exc).__name__
    elif isinstance(exc, (concurrent.futures.TimeoutError, TimeoutError)) and not str(exc):
        text = "no answer in time"
    elif isinstance(exc, concurrent.futures.CancelledError):
        text = "the call was cancelled"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


# -- parser ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        """Print the usage error in one line (any URL password masked) and exit with code 2."""
        self.exit(EXIT_USAGE, f"{PROG}: error: {mask_urls(message)} (see {self.prog} --help)\n")


def positive_float(text: str) -> float:
    """An argparse type: a number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more: {text!r}")
        return value

    return parse


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes (after the command too: there they only override what was given).

    Unset options stay None here; :func:`.config.apply_profile` fills them from the profile or the defaults.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--profile",
        metavar="P",
        default=default(None),
        help="a profile of the config file (default: $PROCESS_COMMS_PROFILE)",
    )
    group.add_argument(
        "--broker",
        metavar="URL",
        default=default(None),
        help=f"amqp:// URL(s), comma-separated (default: ${ENV_BROKER})",
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON")
    group.add_argument(
        "--timeout",
        metavar="S",
        type=positive_float,
        default=default(None),
        help=f"seconds to wait for any answer (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--prefix",
        metavar="NAME",
        default=default(None),
        help="name the exchanges and the task queue NAME.messages, NAME.tasks, NAME.process.queue",
    )
    group.add_argument(
        "--message-exchange",
        metavar="N",
        default=default(None),
        help=f"exchange of RPCs and broadcasts (default {defaults.MESSAGE_EXCHANGE})",
    )
    group.add_argument(
        "--task-exchange",
        metavar="N",
        default=default(None),
        help=f"exchange of tasks (default {defaults.TASK_EXCHANGE})",
    )
    group.add_argument(
        "--task-queue", metavar="N", default=default(None), help="queue of tasks (default: the task exchange's name)"
    )


def add_command(subparsers: SubParsers, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command's parser, with the global options and the exit-code epilog (for ``register``)."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, suppress=True)
    return parser


def version() -> str:
    """The installed distribution's version, from its metadata (``pip install`` puts it there)."""
    try:
        return importlib.metadata.version("process_comms")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``process-comms`` (usage errors exit with code 2 in one line)."""
    # imported here, not at module level: see TYPE_CHECKING above
    from . import completion, control, dashboard, launch, permissions, queue, report, show, status, watch, worker
    from . import daemon as daemon_command
    from . import list as list_command
    from . import workers as workers_command

    parser = _Parser(
        prog=PROG,
        description="Run a worker, launch processes and control them over a message broker.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    _add_global_options(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for command in (
        worker,
        launch,
        status,
        list_command,
        show,
        report,
        control,
        watch,
        queue,
        permissions,
        completion,
        dashboard,
        workers_command,
        daemon_command,
    ):
        command.register(subparsers)
    return parser


# -- dispatch --------------------------------------------------------------------------------------
def _broker_url(args: argparse.Namespace) -> str:
    url: str | None = args.broker or os.environ.get(ENV_BROKER) or None
    if not url:
        raise CliError(f"no broker URL: give --broker URL, set {ENV_BROKER} or use a --profile with one", EXIT_USAGE)
    for one in split_urls(url):  # several brokers: comma-separated (a cluster's nodes)
        try:
            scheme = urlsplit(one).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("amqp", "amqps"):
            raise CliError(f"unsupported broker URL {mask_url(one)!r}: expected amqp:// or amqps://", EXIT_USAGE)
    return url


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``process-comms`` with ``argv`` (default: the command line) and return its exit code."""
    from ._common import Context
    from .config import apply_profile

    args = build_parser().parse_args(argv)
    scrub = Scrubber(args.broker or os.environ.get(ENV_BROKER))
    try:
        apply_profile(args)  # a missing profile or a bad config file: one line, exit 2
        scrub = Scrubber(args.broker or os.environ.get(ENV_BROKER))
        needs_broker = getattr(args, "needs_broker", True)  # False for commands that only print (permissions)
        ctx = Context(args=args, broker=_broker_url(args) if needs_broker else "", scrub=scrub)
        if args.command != "worker":
            # a client reports its errors itself, in one line: library logs would only repeat them
            setup_logging("ERROR", scrub, tracebacks=False)
            # the AMQP libraries log a failed connection before raising it: the error line already says it
            for name in ("pika", "aiormq", "aio_pika"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        code: int = args.run(args, ctx)  # set by each command's register()
        return code
    except KeyboardInterrupt:
        print_error("interrupted: stopped waiting (what was sent may still happen)", scrub, sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:  # stdout was closed early (e.g. `| head`): do not complain again at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - every error is one line and an exit code, never a traceback
        print_error(describe(exc), scrub, sys.stderr)
        return exit_code_for(exc)


def __getattr__(name: str) -> Any:
    """``parse_pid`` and ``wait_many`` live in :mod:`._common`; found here too, where they always were."""
    if name in ("parse_pid", "wait_many"):
        from . import _common

        return getattr(_common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _entry() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
