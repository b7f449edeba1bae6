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

The exit codes are defined in :mod:`.base`; this docstring ends with their table, as ``--help`` does.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn
from urllib.parse import urlsplit

from ..urls import mask_url, split_urls
from . import completion, control, dashboard, launch, permissions, queue, report, show, status, watch, worker
from . import daemon as daemon_command
from . import list as list_command
from . import workers as workers_command
from ._common import Context, parse_pid, wait_many
from ._output import PROG, Scrubber, mask_urls, print_error, setup_logging
from .base import (
    DEFAULT_TIMEOUT,
    ENV_BROKER,
    EPILOG,
    EXIT_BROKER,
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_REMOTE,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Parser,
    add_command,
    add_global_options,
    add_subcommands,
    describe,
    exit_code_for,
)
from .config import apply_profile

__doc__ = f"{__doc__}\nExit codes:\n{EXIT_CODES}"

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENV_BROKER",
    "EXIT_BROKER",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "COMMANDS",
    "CliError",
    "add_command",
    "build_parser",
    "describe",
    "exit_code_for",
    "main",
    "PROG",
    "Scrubber",
    "mask_urls",
    "parse_pid",
    "print_error",
    "setup_logging",
    "wait_many",
]

#: Every command module, in the order ``--help`` lists them; each has ``register(subparsers)``.
COMMANDS = (
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
)


def version() -> str:
    """The installed distribution's version, from its metadata (``pip install`` puts it there)."""
    try:
        return importlib.metadata.version("process_comms")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown (not installed)"


def build_parser() -> Parser:
    """The argument parser of ``process-comms`` (usage errors exit with code 2 in one line)."""
    parser = Parser(
        prog=PROG,
        description="Run a worker, launch processes and control them over a message broker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    add_global_options(parser, suppress=False)
    subparsers = add_subcommands(parser, "command", "COMMAND")
    for command in COMMANDS:
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
    parser = build_parser()
    args = parser.parse_args(argv)
    scrub = Scrubber(args.broker or os.environ.get(ENV_BROKER))
    try:
        apply_profile(args)  # a missing profile or a bad config file: one line, exit 2
        scrub = Scrubber(args.broker or os.environ.get(ENV_BROKER))
        needs_broker: bool = args.needs_broker  # False for commands that only print (permissions): base.add_command
        ctx = Context(args=args, broker=_broker_url(args) if needs_broker else "", scrub=scrub, parser=parser)
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


def _entry() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
