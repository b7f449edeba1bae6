"""``process-comms status``: print the status of processes (pid, state, paused, status text, class)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..client.display import COLUMNS, StatusTable
from ..client.thread_controller import RemoteProcessThreadController
from ._common import GRACE, connect_from, report, unique_pids, wait_many
from .main import EXIT_OK, add_command

if TYPE_CHECKING:
    from ._common import Context, SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``status``."""
    p = add_command(subparsers, "status", "print the status of processes (pid, state, paused, status text, class)")
    p.add_argument("pids", metavar="PID", nargs="+")
    p.set_defaults(run=run)


def _lines(statuses: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The table as the command has always printed it: upper-case header, no rule, ``-`` in empty cells.

    The cells (state name, paused, status text, class) are :class:`process_comms.StatusTable`'s.
    """
    # TODO(lead): a plain-text form of StatusTable in process_comms/client/display.py (upper-case header,
    # no dashed rule, "-" for an empty cell, whitespace in cells collapsed) would replace this layout
    rows = [[c.upper() for c in COLUMNS]]
    rows += [[" ".join(cell.split()) or "-" for cell in row] for row in StatusTable(statuses).rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the status of each PID: an aligned table, or JSON."""
    pids = unique_pids(args.pids)
    with connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout)
        futures = {key: controller.get_status(pid, ctx.timeout) for key, pid in pids}
        results = wait_many(futures, ctx.timeout + GRACE, ctx.err)
    code = EXIT_OK
    records: list[dict[str, Any]] = []
    statuses: dict[str, Mapping[str, Any]] = {}
    for key, outcome in results.items():
        status = outcome if isinstance(outcome, dict | BaseException) else {"state": str(outcome)}
        code = max(code, report(ctx, records, key, status))
        if not isinstance(status, BaseException):
            statuses[key] = status
    if ctx.json:
        ctx.print_json(records)
    elif statuses:
        for line in _lines(statuses):
            ctx.print(line)
    return code
