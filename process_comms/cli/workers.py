"""``process-comms workers``: the workers that answer within a window, with their queues, slots and health."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..client.display import layout_columns
from ..client.thread_controller import RemoteProcessThreadController
from ._common import GRACE, connect_from
from .base import EXIT_OK, add_command, positive_float

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["COLUMNS", "register", "run"]

#: The columns ``workers`` prints.
COLUMNS = ("WORKER", "HOST", "PID", "QUEUES (USED/SLOTS)", "PROCESSES", "UPTIME", "HEALTH")


def register(subparsers: SubParsers) -> None:
    """Add ``workers``."""
    p = add_command(subparsers, "workers", "list the workers that answer, with their queues, slots and health")
    p.add_argument(
        "--within",
        metavar="S",
        type=positive_float,
        default=1.0,
        help="seconds to collect answers (default 1); a worker that answers later is not listed",
    )
    p.set_defaults(run=run)


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _queues_text(info: Mapping[str, object]) -> str:
    given = info.get("slots")
    slots: dict[str, object] = given if isinstance(given, dict) else {}
    parts = []
    for name, counts in sorted(slots.items()):
        counts = counts if isinstance(counts, dict) else {}
        total = counts.get("total")
        parts.append(f"{name} {counts.get('used', '?')}/{total if total is not None else '-'}")
    return ", ".join(parts) or "-"


def _health(info: Mapping[str, object]) -> str:
    if info.get("consuming"):
        return "consuming"
    given = info.get("queues")
    queues: dict[str, object] = given if isinstance(given, dict) else {}
    idle = sorted(name for name, consuming in queues.items() if not consuming)
    return f"not consuming: {', '.join(idle)}" if idle else "not consuming"


def _row(info: Mapping[str, object]) -> list[str]:
    return [
        str(info.get("worker") or "-"),
        str(info.get("host") or "-"),
        str(info.get("pid") or "-"),
        _queues_text(info),
        str(info.get("processes", "-")),
        _duration(info.get("uptime")),
        _health(info),
    ]


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the workers as a table (or JSON: a list, empty if none answered); exit 0 either way."""
    with connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout)
        found = controller.list_workers(args.within).result(args.within + ctx.timeout + GRACE)
    if ctx.json:
        ctx.print_json(found)
        return EXIT_OK
    if not found:
        ctx.print(f"no worker answered within {args.within:g} s")
        return EXIT_OK
    for line in layout_columns([list(COLUMNS), *(_row(info) for info in found)], rule=False):
        ctx.print(line)
    return EXIT_OK
