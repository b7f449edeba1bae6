"""``process-comms queue``: how many tasks wait in the task queue and how many workers consume it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

# pika, not the library's aio-pika transport: the library has no call that inspects a queue, and a connected
# communicator would first declare exchanges and a reply queue this command has no use for. One passive
# queue.declare on a blocking connection (404 if the queue is missing) is all it needs; pika is a dependency
# in setup.cfg for this.
import pika
import pika.exceptions

from ..urls import mask_url
from .main import EXIT_BROKER, EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, add_command, describe

if TYPE_CHECKING:
    from ._common import Context, SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``queue``."""
    p = add_command(subparsers, "queue", "print how many tasks wait in the task queue and how many workers consume it")
    p.set_defaults(run=run)


def _parameters(ctx: Context) -> pika.URLParameters:
    """The broker URL as pika's parameters: one attempt, every socket wait bounded by --timeout."""
    try:
        params = pika.URLParameters(ctx.broker)
    except Exception as exc:  # noqa: BLE001 - pika raises many kinds for a bad URL
        raise CliError(f"invalid broker URL {mask_url(ctx.broker)}: {describe(exc)}", EXIT_USAGE) from None
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = ctx.timeout
    params.stack_timeout = ctx.timeout
    params.blocked_connection_timeout = ctx.timeout
    return params


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Ask the broker how many tasks wait in the task queue and how many workers consume it."""
    name = ctx.task_queue
    params = _parameters(ctx)
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError:
        raise CliError(f"the broker at {mask_url(ctx.broker)} refused the credentials", EXIT_BROKER) from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise CliError(f"could not connect to {mask_url(ctx.broker)}: {describe(exc)}", EXIT_BROKER) from None
    try:
        channel = connection.channel()
        declared = channel.queue_declare(queue=name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            raise CliError(
                f"the task queue {name!r} does not exist on {mask_url(ctx.broker)} "
                "(no worker or client has used it yet; check --task-queue)",
                EXIT_ERROR,
            ) from None
        raise CliError(f"the broker refused to inspect {name!r}: {exc.reply_text}", EXIT_ERROR) from None
    except pika.exceptions.AMQPError as exc:
        raise CliError(f"lost the broker while inspecting {name!r}: {describe(exc)}", EXIT_BROKER) from None
    finally:
        try:
            if connection.is_open:
                connection.close()
        except pika.exceptions.AMQPError:
            pass
    messages, consumers = int(declared.method.message_count), int(declared.method.consumer_count)
    if ctx.json:
        ctx.print_json({"queue": name, "messages": messages, "consumers": consumers})
    else:
        ctx.print(f"queue {name}: {messages} task(s) waiting, {consumers} worker(s) consuming")
    return EXIT_OK
