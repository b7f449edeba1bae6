"""``process-comms report PID``: a process's log lines (``Process.report``, its ``logger`` and its module's
logger), as AiiDA's; with ``--follow``, new lines as they come until the process ends (or Ctrl-C)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ..client.thread_controller import RemoteProcessThreadController
from ..wire.messages import is_terminal
from ..wire.types import Pid
from ._common import GRACE, add_store_option, connect_from, from_store, record_store
from ._common import parse_pid as _parse_pid
from ._records import when
from .base import EXIT_OK, add_command

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["FOLLOW_INTERVAL", "register", "run"]

#: Seconds between two reads of the record with --follow (each is one request to the process's worker).
FOLLOW_INTERVAL = 0.5


def register(subparsers: SubParsers) -> None:
    """Add ``report``."""
    p = add_command(
        subparsers, "report", "print the log lines of a process (Process.report, its logger, its module's logger)"
    )
    p.add_argument("pid", metavar="PID")
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help=f"print new lines as they come (read every {FOLLOW_INTERVAL:g} s) until the process ends or Ctrl-C",
    )
    add_store_option(p)
    p.set_defaults(run=run)


def _print_line(ctx: Context, line: dict[str, object]) -> None:
    ctx.print(f"{when(line.get('time'))} {line.get('level', '')}: {line.get('text', '')}")


def _follow(ctx: Context, controller: RemoteProcessThreadController, pid: Pid, key: str) -> int:
    """Print the record's lines, then new ones every FOLLOW_INTERVAL, until the process ends; Ctrl-C ends it too."""
    seen = 0  # lines printed so far, counting those the record dropped (it keeps the newest MAX_LOG_LINES)
    try:
        while True:
            record = controller.get_process(pid, ctx.timeout).result(ctx.timeout + GRACE)
            lines = [line for line in record.get("log") or [] if isinstance(line, dict)]
            total = int(record.get("log_dropped") or 0) + len(lines)
            new = total - seen
            if new > len(lines) and not ctx.json:
                ctx.print(f"({new - len(lines)} line(s) dropped)")
            for line in lines[max(0, len(lines) - new) :] if new > 0 else []:
                if ctx.json:
                    ctx.print_json({"pid": key, **line})
                else:
                    _print_line(ctx, line)
            seen = max(seen, total)
            if is_terminal(record.get("state_name")):
                return EXIT_OK
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:  # the normal end of following, as for `watch`
        return EXIT_OK


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print ``time LEVEL text`` for each log line of PID (or the lines as JSON); no record exits 3."""
    pid = _parse_pid(args.pid)
    with record_store(ctx) as store, connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout, store=store)
        if args.follow:
            return _follow(ctx, controller, pid, args.pid)
        record = controller.get_process(pid, ctx.timeout).result(ctx.timeout + GRACE)
    lines: list[dict[str, object]] = [line for line in record.get("log") or [] if isinstance(line, dict)]
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
        _print_line(ctx, line)
    return EXIT_OK
