"""``process-comms pause|play|kill``: each PID (one line each), or every process by broadcast with --all."""

from __future__ import annotations

import argparse
import concurrent.futures
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from ..client.controller import RemoteProcessController
from ..client.thread_controller import RemoteProcessThreadController
from ..wire.messages import Pid, is_terminal, state_name
from ._common import GRACE, connect_from, report, unique_pids, wait_many
from .base import EXIT_OK, EXIT_USAGE, CliError, add_command

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]

#: Seconds ``--all`` listens for the answers of the processes it reached (at most --timeout): process_comms
#: processes answer a broadcast at once (process_comms/worker/launcher.py, Broadcasts), plumpy ones never do.
ALL_ANSWER_WINDOW = 2.0

_DONE_TEXT = {
    ("pause", True): "paused",
    ("pause", False): "not paused: it had already ended",
    ("play", True): "playing",
    ("play", False): "not playing: it had already ended",
    ("kill", True): "killed",
    ("kill", False): "not killed: it had already ended otherwise",
}


def register(subparsers: SubParsers) -> None:
    """Add ``pause``, ``play`` and ``kill``."""
    for name, what in (("pause", "pause"), ("play", "resume"), ("kill", "kill")):
        p = add_command(subparsers, name, f"{what} processes by pid, or every process with --all")
        p.add_argument("pids", metavar="PID", nargs="*")
        p.add_argument(
            "--all",
            action="store_true",
            help=f"{what} every process (a broadcast, confirmed by the broker, not by each process)",
        )
        if name != "play":
            p.add_argument("--message", metavar="TEXT", help="the reason, shown as the process's status text")
        if name == "kill":
            p.add_argument(
                "--force", action="store_true", help="mark killed at once, without waiting for the run to end"
            )
        p.set_defaults(run=run, message=None, force=False)  # the options it has override them


def _broadcast(ctx: Context, intent: str, message: str | None, force: bool) -> int:
    if force:
        ctx.warn("--force is ignored with --all: a broadcast kill is never forced")
    with connect_from(ctx) as comm:
        core = RemoteProcessController(comm, rpc_timeout=ctx.timeout)
        window = min(ALL_ANSWER_WINDOW, ctx.timeout)
        broadcast: dict[str, Callable[[], Awaitable[Mapping[object, object] | None]]] = {
            "pause": lambda: core.pause_all(message, answers_within=window),
            "play": lambda: core.play_all(answers_within=window),
            "kill": lambda: core.kill_all(message, answers_within=window),
        }
        answers = comm.submit(broadcast[intent]).result(ctx.timeout + window + GRACE) or {}
    pids = sorted(str(pid) for pid in answers)
    if ctx.json:
        ctx.print_json({"all": True, "intent": intent, "sent": True, "answered": len(pids), "pids": pids})
    else:
        ctx.print(
            f"{intent} sent to every process: {len(pids)} process(es) answered within {window:g} s "
            "(plumpy processes do not answer)"
        )
    return EXIT_OK


def _ended_ones(
    ctx: Context, controller: RemoteProcessThreadController, pids: dict[str, Pid], results: Mapping[str, object]
) -> dict[str, bool]:
    """``{pid: False}`` for the played pids that had ended: ``play_process`` answers True for them, as plumpy
    does (an ended process is not paused), but "playing" would be the wrong word (``pause`` says "ended")."""
    played = [key for key, outcome in results.items() if outcome is True]
    statuses = wait_many({key: controller.get_status(pids[key], ctx.timeout) for key in played}, ctx.timeout + GRACE)
    return {
        key: False
        for key, status in statuses.items()
        if isinstance(status, dict) and is_terminal(state_name(status.get("state")))  # unanswered: "playing"
    }


def run(args: argparse.Namespace, ctx: Context) -> int:
    """pause / play / kill: each PID (one line each), or every process by broadcast with --all."""
    intent: str = args.command
    message: str | None = args.message  # None for play, which has no --message (register)
    force: bool = bool(args.force)  # False but for kill
    if args.all and args.pids:
        raise CliError(f"{intent}: give PIDs or --all, not both", EXIT_USAGE)
    if not args.all and not args.pids:
        raise CliError(f"{intent}: give at least one PID, or --all", EXIT_USAGE)
    if args.all:
        return _broadcast(ctx, intent, message, force)
    pids = unique_pids(args.pids)
    with connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout)
        calls: dict[str, Callable[[Pid], concurrent.futures.Future[bool]]] = {
            "pause": lambda pid: controller.pause_process(pid, message, ctx.timeout),
            "play": lambda pid: controller.play_process(pid, ctx.timeout),
            "kill": lambda pid: controller.kill_process(pid, message, force, ctx.timeout),
        }
        futures = {key: calls[intent](pid) for key, pid in pids}
        results = wait_many(futures, ctx.timeout + GRACE, ctx.err)
        if intent == "play":
            results.update(_ended_ones(ctx, controller, dict(pids), results))
    code = EXIT_OK
    records: list[dict[str, object]] = []
    for key, outcome in results.items():
        code = max(code, report(ctx, records, key, outcome))
        if not isinstance(outcome, BaseException) and not ctx.json:
            done = _DONE_TEXT.get((intent, bool(outcome)), str(outcome)) if isinstance(outcome, bool) else str(outcome)
            ctx.print(f"{key} {done}")
    if ctx.json:
        ctx.print_json(records)
    return code
