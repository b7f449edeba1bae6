"""``process-comms list``: the fleet's processes, newest first (or by state, class, label), live and ended (like
``verdi process list``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypedDict

from ..client.display import layout_columns, progress_text
from ..client.thread_controller import RemoteProcessThreadController
from ..wire.listing import ACTIVE_STATES, SORTS
from ..wire.messages import LABEL_MAX_CHARS, TERMINAL_STATES
from ._common import GRACE, add_store_option, connect_from, from_store, record_store
from ._records import age, host_text, parse_since
from .base import EXIT_OK, EXIT_USAGE, CliError, add_command, int_at_least

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["COLUMNS", "register", "run"]

#: The columns ``list`` prints.
COLUMNS = ("PID", "CLASS", "STATE", "PAUSED", "PROGRESS", "WORKER", "AGE")
_STATES = (*ACTIVE_STATES, *TERMINAL_STATES)


def register(subparsers: SubParsers) -> None:
    """Add ``list``."""
    p = add_command(subparsers, "list", "list the fleet's processes, newest first, live and ended")
    p.add_argument(
        "--state",
        metavar="S",
        action="append",
        choices=_STATES,
        help=f"only processes in state S ({', '.join(_STATES)}); repeat it for any of several",
    )
    p.add_argument("--active", action="store_true", help=f"only processes not ended ({', '.join(ACTIVE_STATES)})")
    p.add_argument("--label", metavar="TEXT", help="only processes whose label holds TEXT (case-sensitive substring)")
    p.add_argument(
        "--sort",
        choices=SORTS,
        default="age",
        help="order: age (default, newest first; pages with --cursor), state, class or label (the newest --limit "
        "matching processes, one page)",
    )
    p.add_argument("--reverse", action="store_true", help="the other way round (age: oldest of the newest --limit)")
    p.add_argument("--limit", metavar="N", type=int_at_least(1), default=100, help="at most N processes (default 100)")
    p.add_argument("--since", metavar="D", type=parse_since, help="created since D: 30m, 2h, 7d or an ISO date/time")
    p.add_argument("--class", dest="class_name", metavar="CLASS", help="only processes of CLASS ('module:Name')")
    p.add_argument(
        "--cursor",
        metavar="C",
        help="the next page: the C a listing printed last (a page holds at most --limit rows and 1 MiB)",
    )
    add_store_option(p)
    p.set_defaults(run=run)


class _Query(TypedDict):
    states: list[str] | None
    label: str | None
    sort: str | None
    reverse: bool


def _query(args: argparse.Namespace) -> _Query:
    """The listing's states (``--state`` repeated, ``--active``), label and order, as the controller takes them."""
    states = [*(args.state or ()), *(ACTIVE_STATES if args.active else ())]
    if args.label is not None and len(args.label) > LABEL_MAX_CHARS:
        raise CliError(f"--label: at most {LABEL_MAX_CHARS} characters, not {len(args.label)}", EXIT_USAGE)
    unique = list(dict.fromkeys(states)) or None
    return {"states": unique, "label": args.label, "sort": args.sort, "reverse": bool(args.reverse)}


def _row(summary: Mapping[str, object]) -> list[str]:
    paused = summary.get("paused")
    return [
        str(summary.get("pid")),
        str(summary.get("class") or "-"),
        str(summary.get("state_name") or "-"),
        "yes" if paused else "no",
        " ".join(progress_text(summary.get("progress")).split()) or "-",
        host_text(summary.get("host")) or "-",
        age(summary.get("ctime")) or "-",
    ]


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print one page of processes as a table (or JSON); if more are left, say on stderr how to get them. No
    worker up and no store is an unreachable error (exit 3)."""
    with record_store(ctx) as store, connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout, store=store)
        future = controller.list_processes_page(
            None, args.limit, args.since, args.class_name, args.cursor, ctx.timeout, **_query(args)
        )
        page = future.result(ctx.timeout + GRACE)
    rows = page["processes"]
    if ctx.json:
        ctx.print_json(rows)
    else:
        if page.get("source") == "store":
            ctx.print(from_store(ctx, page.get("source_reason")))
        labelled = any(summary.get("label") for summary in rows)  # a LABEL column only if one has a label
        table = [_row(summary) + ([str(summary.get("label") or "-")] if labelled else []) for summary in rows]
        for line in layout_columns([[*COLUMNS, *(["LABEL"] if labelled else [])], *table], rule=False):
            ctx.print(line)
    if page["more"] is not None:
        ctx.warn(f"more processes: add --cursor {page['more']}")
    return EXIT_OK
