"""``process-comms report PID``: a process's log lines (``Process.report`` and its ``logger``), as AiiDA's."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..client.thread_controller import RemoteProcessThreadController
from ._common import GRACE, connect_from
from ._common import parse_pid as _parse_pid
from ._records import when
from .main import EXIT_OK, add_command

if TYPE_CHECKING:
    from ._common import Context, SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``report``."""
    p = add_command(subparsers, "report", "print the log lines of a process (Process.report and its logger)")
    p.add_argument("pid", metavar="PID")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print ``time LEVEL text`` for each log line of PID (or the lines as JSON); no record exits 3."""
    with connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout)
        record = controller.get_process(_parse_pid(args.pid), ctx.timeout).result(ctx.timeout + GRACE)
    lines: list[dict[str, Any]] = [line for line in record.get("log") or [] if isinstance(line, dict)]
    if ctx.json:
        ctx.print_json({"pid": args.pid, "log": lines, "dropped": record.get("log_dropped", 0)})
        return EXIT_OK
    if record.get("log_dropped"):
        ctx.print(f"({record['log_dropped']} older line(s) dropped)")
    for line in lines:
        text = str(line.get("text", ""))
        ctx.print(f"{when(line.get('time'))} {line.get('level', '')}: {text}")
    return EXIT_OK
