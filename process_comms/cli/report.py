"""``process-comms report PID``: a process's log lines (``Process.report`` and its ``logger``), as AiiDA's."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..client.thread_controller import RemoteProcessThreadController
from ._common import GRACE, add_store_option, connect_from, from_store, record_store
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
    add_store_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print ``time LEVEL text`` for each log line of PID (or the lines as JSON); no record exits 3."""
    with record_store(ctx) as store, connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout, store=store)
        record = controller.get_process(_parse_pid(args.pid), ctx.timeout).result(ctx.timeout + GRACE)
    lines: list[dict[str, Any]] = [line for line in record.get("log") or [] if isinstance(line, dict)]
    if ctx.json:
        answer = {"pid": args.pid, "log": lines, "dropped": record.get("log_dropped", 0)}
        if record.get("source") == "store":
            answer.update(source=record["source"], source_reason=record.get("source_reason"))
        ctx.print_json(answer)
        return EXIT_OK
    if record.get("source") == "store":
        ctx.print(from_store(ctx, record.get("source_reason")))
    if record.get("log_dropped"):
        ctx.print(f"({record['log_dropped']} older line(s) dropped)")
    for line in lines:
        text = str(line.get("text", ""))
        ctx.print(f"{when(line.get('time'))} {line.get('level', '')}: {text}")
    return EXIT_OK
