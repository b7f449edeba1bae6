"""The vocabulary every command shares: exit codes, the error that carries one, the parser and its options.

A leaf of ``process_comms/cli/``: it imports no command and not :mod:`.main` (the registry), so each command
module imports it and :mod:`.main` imports the commands, with no import circle (tests/test_import_cycles.py).
Celery's CLI keeps the same split (``celery/bin/base.py``, https://github.com/celery/celery).

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
from collections.abc import Callable
from typing import Any, NoReturn, Protocol, TypeVar

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
from ._output import PROG, mask_urls

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENV_BROKER",
    "EPILOG",
    "EXIT_BROKER",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "Parser",
    "SubParsers",
    "add_command",
    "add_global_options",
    "add_subcommands",
    "describe",
    "exit_code_for",
    "int_at_least",
    "positive_float",
]

_ActionT = TypeVar("_ActionT", bound=argparse.Action)

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

#: The exit codes' table (this module's docstring, from its "Exit codes:" line on): the one text that
#: ``--help`` prints and :mod:`.main`'s docstring ends with.
EXIT_CODES = (__doc__ or "Exit codes:\n").split("Exit codes:\n", 1)[1]
#: The epilog of every parser.
EPILOG = "exit codes:\n" + EXIT_CODES


class CliError(Exception):
    """An error the command reports in one line, with the exit code it means."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """The exit code that an exception means (the table in this module's docstring)."""
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
class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit code 2), like every other error.

    It keeps its arguments in :attr:`arguments` (what completion describes): those added with ``add_argument``,
    the global options (:func:`add_global_options`) and the subcommands (:func:`add_subcommands`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # argparse's own parameters, passed on
        self.arguments: list[argparse.Action] = []  # before super().__init__, which adds --help
        super().__init__(*args, **kwargs)

    def _add_action(self, action: _ActionT) -> _ActionT:
        # argparse's one hook for every argument added to the parser itself (not to a group of it)
        self.arguments.append(action)
        return super()._add_action(action)

    def error(self, message: str) -> NoReturn:
        """Print the usage error in one line (any URL password masked) and exit with code 2."""
        self.exit(EXIT_USAGE, f"{PROG}: error: {mask_urls(message)} (see {self.prog} --help)\n")


class SubParsers(Protocol):
    """What a command's ``register`` is given: where :func:`add_command` adds the command's parser."""

    def add_parser(
        self,
        name: str,
        *,
        help: str | None = ...,
        description: str | None = ...,
        epilog: str | None = ...,
        formatter_class: type[argparse.HelpFormatter] = ...,
    ) -> argparse.ArgumentParser: ...


def add_subcommands(parser: Parser, dest: str, metavar: str) -> SubParsers:
    """The required subcommands of ``parser`` (each added with :func:`add_command`), kept in its arguments."""
    subcommands = parser.add_subparsers(dest=dest, metavar=metavar, required=True, parser_class=Parser)
    parser.arguments.append(subcommands)
    return subcommands


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


def add_global_options(parser: Parser, suppress: bool) -> None:
    """The options every command takes (after the command too: there they only override what was given).

    Unset options stay None here; :func:`.config.apply_profile` fills them from the profile or the defaults.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")

    def option(*flags: str, **kwargs: Any) -> None:  # add_argument's parameters
        parser.arguments.append(group.add_argument(*flags, **kwargs))

    option(
        "--profile",
        metavar="P",
        default=default(None),
        help="a profile of the config file (default: $PROCESS_COMMS_PROFILE)",
    )
    option(
        "--broker",
        metavar="URL",
        default=default(None),
        help=f"amqp:// URL(s), comma-separated (default: ${ENV_BROKER})",
    )
    option("--json", action="store_true", default=default(False), help="print JSON")
    option(
        "--timeout",
        metavar="S",
        type=positive_float,
        default=default(None),
        help=f"seconds to wait for any answer (default {DEFAULT_TIMEOUT:g})",
    )
    option(
        "--prefix",
        metavar="NAME",
        default=default(None),
        help="name the exchanges and the task queue NAME.messages, NAME.tasks, NAME.process.queue",
    )
    option(
        "--message-exchange",
        metavar="N",
        default=default(None),
        help=f"exchange of RPCs and broadcasts (default {defaults.MESSAGE_EXCHANGE})",
    )
    option(
        "--task-exchange",
        metavar="N",
        default=default(None),
        help=f"exchange of tasks (default {defaults.TASK_EXCHANGE})",
    )
    option(
        "--task-queue", metavar="N", default=default(None), help="queue of tasks (default: the task exchange's name)"
    )


def add_command(subparsers: SubParsers, name: str, help_text: str) -> Parser:
    """A command's parser, with the global options and the exit-code epilog (for ``register``).

    Every command's arguments also have ``needs_broker`` (True unless the command sets it False: it only
    prints), ``store`` and ``task_queue_type`` (None unless the command has the option), so that
    :mod:`.main` and :mod:`.config` read them directly.
    """
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if not isinstance(parser, Parser):  # add_subcommands makes every command's parser one
        raise TypeError(f"{name}: add commands with add_subcommands' parsers, not {type(parser).__name__}")
    add_global_options(parser, suppress=True)
    parser.set_defaults(needs_broker=True, store=None, task_queue_type=None)
    return parser
