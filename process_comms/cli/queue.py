"""``process-comms queue``: how many tasks wait in the task queue and how many workers consume it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import AccessRefused, BrokerUnavailable
from ..transports.rmq.inspect import inspect_task_queue
from ..urls import mask_url
from .base import EXIT_BROKER, EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, add_command, describe

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``queue``."""
    p = add_command(subparsers, "queue", "print how many tasks wait in the task queue and how many workers consume it")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Ask the broker how many tasks wait in the task queue and how many workers consume it."""
    name = ctx.task_queue
    try:
        found = inspect_task_queue(ctx.broker, name, ctx.timeout)
    except AccessRefused as exc:
        raise CliError(str(exc), EXIT_ERROR) from None
    except BrokerUnavailable as exc:
        raise CliError(str(exc), EXIT_BROKER) from None
    except ValueError as exc:  # pika's parameters refuse a malformed URL
        raise CliError(f"invalid broker URL {mask_url(ctx.broker)}: {describe(exc)}", EXIT_USAGE) from None
    if not found["exists"]:
        raise CliError(
            f"the task queue {name!r} does not exist on {mask_url(ctx.broker)} "
            "(no worker or client has used it yet; check --task-queue)",
            EXIT_ERROR,
        )
    messages, consumers = found["messages"], found["consumers"]
    if ctx.json:
        ctx.print_json({"queue": name, "messages": messages, "consumers": consumers})
    else:
        ctx.print(f"queue {name}: {messages} task(s) waiting, {consumers} worker(s) consuming")
    return EXIT_OK
