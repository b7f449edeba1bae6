"""``process-comms permissions``: print the rabbitmqctl lines for a least-privilege worker user and client user.

The rules are :mod:`process_comms.transports.rmq.permissions` (docs/security.md); this command only prints
them for the exchange and queue names of the global options.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..transports.rmq.permissions import rabbitmqctl_lines
from .base import EXIT_OK, add_command

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``permissions``."""
    p = add_command(
        subparsers, "permissions", "print rabbitmqctl lines that give a worker user and a client user least privilege"
    )
    p.add_argument("--worker-user", required=True, help="the broker user the workers connect as")
    p.add_argument("--client-user", required=True, help="the broker user the clients (controllers) connect as")
    p.add_argument("--vhost", default="/", help="the virtual host (default: /)")
    p.set_defaults(run=run, needs_broker=False)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the lines (or, with --json, the list of lines); nothing is sent to the broker."""
    lines = rabbitmqctl_lines(
        args.worker_user,
        args.client_user,
        vhost=args.vhost,
        message_exchange=args.message_exchange,
        task_exchange=args.task_exchange,
        task_queue=ctx.task_queue,
    )
    if ctx.json:
        ctx.print_json(lines)
    else:
        for line in lines:
            ctx.print(line)
    return EXIT_OK
