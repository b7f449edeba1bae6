"""``process-comms status``: print the status of processes (pid, state, paused, progress, status text, class).

A process no worker holds (ended, parked) is answered from the fleet's record; a pid with none exits 3.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..client.display import PROGRESS_COLUMNS, StatusTable
from ..client.thread_controller import RemoteProcessThreadController
from ._common import GRACE, add_store_option, connect_from, from_store, record_store, report, unique_pids, wait_many
from .base import EXIT_OK, add_command

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``status``."""
    p = add_command(subparsers, "status", "print the status of processes (pid, state, paused, status text, class)")
    p.add_argument("pids", metavar="PID", nargs="+")
    add_store_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the status of each PID: an aligned table, or JSON."""
    pids = unique_pids(args.pids)
    with record_store(ctx) as store, connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout, store=store)
        futures = {key: controller.get_status(pid, ctx.timeout) for key, pid in pids}
        results = wait_many(futures, ctx.timeout + GRACE, ctx.err)
    code = EXIT_OK
    records: list[dict[str, object]] = []
    statuses: dict[str, Mapping[str, object]] = {}
    for key, outcome in results.items():
        status = outcome if isinstance(outcome, dict | BaseException) else {"state": str(outcome)}
        code = max(code, report(ctx, records, key, status))
        if not isinstance(status, BaseException):
            statuses[key] = status
    if ctx.json:
        ctx.print_json(records)
    elif statuses:
        stored = next((s for s in statuses.values() if s.get("source") == "store"), None)
        if stored is not None:
            ctx.print(from_store(ctx, stored.get("source_reason")))
        labelled = any(status.get("label") for status in statuses.values())  # a LABEL column only if one has one
        for line in StatusTable(statuses, (*PROGRESS_COLUMNS, *(("label",) if labelled else ()))).lines("plain"):
            ctx.print(line)
    return code
