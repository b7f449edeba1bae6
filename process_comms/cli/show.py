"""``process-comms show PID``: a process's record: state, history, outputs, exception with traceback."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..client.thread_controller import RemoteProcessThreadController
from ..wire.messages import is_kill_request
from ._common import GRACE, add_store_option, connect_from, from_store, record_store, report, unique_pids, wait_many
from ._records import host_text, when
from .base import EXIT_OK, add_command

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]


def register(subparsers: SubParsers) -> None:
    """Add ``show``."""
    p = add_command(subparsers, "show", "show the record of processes: state, history, outputs, exception")
    p.add_argument("pids", metavar="PID", nargs="+")
    add_store_option(p)
    p.set_defaults(run=run)


def _json(value: object) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def record_lines(record: Mapping[str, object]) -> list[str]:
    """A record for people: one ``name: value`` line each, then the history, the exception's traceback."""
    state = f"{record.get('state_name') or '-'}" + (" (paused)" if record.get("paused") else "")
    if is_kill_request(record):  # a tombstone, not a process (worker/records_service.py)
        state = "kill requested for an unknown pid: no worker has run it (a task of it still queued is dropped)"
    lines = [
        f"pid:       {record.get('pid')}",
        f"class:     {record.get('class') or '-'}",
        *([f"label:     {record['label']}"] if record.get("label") is not None else []),
        *(
            [f"deadline:  {when(record['deadline'])} (time limit {record.get('time_limit'):g} s)"]
            if isinstance(record.get("deadline"), (int, float)) and isinstance(record.get("time_limit"), (int, float))
            else []
        ),
        f"state:     {state}",
        f"status:    {record.get('status') if record.get('status') is not None else '-'}",
        f"worker:    {host_text(record.get('host')) or '-'}" + ("" if record.get("live") else " (not running)"),
        f"created:   {when(record.get('ctime'))}",
        f"modified:  {when(record.get('mtime'))}",
        f"inputs:    {_json(record.get('inputs') or {})}",
        f"progress:  {_json(record.get('progress') or {})}",
    ]
    if record.get("state_name") == "finished":
        lines.append(f"outputs:   {_json(record.get('outputs'))}")
    history = record.get("history")
    if isinstance(history, list) and history:
        lines.append("history:")
        for entry in history:
            if isinstance(entry, dict):
                message = f"  {entry['message']}" if entry.get("message") else ""
                lines.append(f"  {when(entry.get('time'))}  {entry.get('event')}{message}")
    exception = record.get("exception")
    if isinstance(exception, dict):
        lines.append(f"exception: {exception.get('type')}: {exception.get('message')}")
        lines.extend(f"  {line}" for line in str(exception.get("traceback") or "").rstrip().splitlines())
    return lines


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the record of each PID (or JSON); a pid the fleet has no record of exits 3."""
    pids = unique_pids(args.pids)
    with record_store(ctx) as store, connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout, store=store)
        futures = {key: controller.get_process(pid, ctx.timeout) for key, pid in pids}
        results = wait_many(futures, ctx.timeout + GRACE, ctx.err)
    code = EXIT_OK
    records: list[dict[str, object]] = []
    shown = 0
    for key, outcome in results.items():
        code = max(code, report(ctx, records, key, outcome))
        if isinstance(outcome, dict) and not ctx.json:
            if shown:
                ctx.print("")
            if outcome.get("source") == "store":
                ctx.print(from_store(ctx, outcome.get("source_reason")))
            for line in record_lines(outcome):
                ctx.print(line)
            shown += 1
    if ctx.json:
        ctx.print_json(records)
    return code
