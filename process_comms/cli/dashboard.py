"""``process-comms dashboard``: serve the live web page and HTTP API (:mod:`process_comms.dashboard`).

Connects first (a broker that is down is a one-line error, exit 6), then listens; prints
``dashboard ready at http://HOST:PORT/`` once it accepts connections; SIGTERM or Ctrl-C stops it (exit 0).
Needs the ``dashboard`` extra (Starlette, uvicorn, prometheus_client).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from types import FrameType
from typing import TYPE_CHECKING

from ..dashboard._settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENV_READ_TOKEN,
    ENV_TOKEN,
    DashboardError,
    DashboardSettings,
)
from ._common import add_store_option, record_store
from ._output import setup_logging
from .base import EXIT_BROKER, EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, add_command, int_at_least

if TYPE_CHECKING:
    from ..client.records import RecordStore
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]

#: Seconds the server waits for open connections (event streams are ended first) when it stops.
SHUTDOWN_GRACE = 3


def register(subparsers: SubParsers) -> None:
    """Add ``dashboard`` and its options."""
    p = add_command(
        subparsers, "dashboard", "serve a live web page and HTTP API of the fleet's processes (extra: dashboard)"
    )
    p.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; others need a token)"
    )
    p.add_argument(
        "--port",
        type=int_at_least(0),
        default=DEFAULT_PORT,
        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--token",
        metavar="T",
        help=f"bearer token that pause/play/kill (and, beyond loopback, every read) must carry (default ${ENV_TOKEN}); "
        "required beyond loopback",
    )
    p.add_argument(
        "--read-token",
        metavar="T",
        help=f"a second token that may read (records, events, metrics) but not act (default ${ENV_READ_TOKEN}); "
        "with it, reads need a token on loopback too",
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log level on stderr (default WARNING)",
    )
    add_store_option(p)
    p.set_defaults(run=run)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _serve(settings: DashboardSettings, port: int, ctx: Context, store: RecordStore | None) -> int:
    import uvicorn

    from ..dashboard.api import Dashboard
    from ..dashboard.app import create_app

    class Server(uvicorn.Server):
        """uvicorn's server: says when it listens, ends the event streams and exits 0 on SIGTERM/SIGINT."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1]
                ctx.print(f"dashboard ready at {_url(settings.host, int(bound))}")

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # stopping is this command's normal end: do not raise the signal again
            loop.call_soon_threadsafe(board.hub.end_streams)

    loop = asyncio.get_running_loop()
    board = Dashboard(settings, store=store)
    try:
        await board.open()
    except (TimeoutError, asyncio.TimeoutError):
        raise CliError(f"could not connect to {settings.masked_broker} in time", EXIT_BROKER) from None
    try:
        config = uvicorn.Config(
            create_app(settings, board),
            host=settings.host,
            port=port,
            log_config=None,  # our one-line, password-scrubbed handler (setup_logging)
            access_log=False,
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
        try:
            await Server(config).serve()
        except SystemExit:  # uvicorn exits when it cannot listen; its log line said why
            raise CliError(f"the dashboard could not listen on {_url(settings.host, port)}", EXIT_ERROR) from None
    finally:
        await board.close()
    return EXIT_OK


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Serve the dashboard until SIGTERM/SIGINT."""
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs its extra ({exc.name} is missing): pip install '.[dashboard]' from a clone "
            "of process_comms (process_comms[dashboard] once published)",
            EXIT_USAGE,
        ) from None
    settings = DashboardSettings(
        broker=ctx.broker,
        message_exchange=args.message_exchange,
        task_exchange=args.task_exchange,
        task_queue=ctx.task_queue,
        timeout=ctx.timeout,
        host=args.host,
        token=DashboardSettings.token_from_env(args.token),
        read_token=DashboardSettings.token_from_env(args.read_token, ENV_READ_TOKEN),
    )
    try:
        settings.check()
    except DashboardError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    setup_logging(args.log_level, ctx.scrub, tracebacks=False)
    for name in ("pika", "aiormq", "aio_pika"):  # the error line says what a failed connection was
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    with record_store(ctx) as store:
        return asyncio.run(_serve(settings, args.port, ctx, store))
