"""``process-comms daemon``: keep N workers running in the background, per profile (start, stop, status, ...).

The workers are ``process-comms worker`` processes with the profile's broker, names and store; a supervisor
(circus, the optional ``daemon`` extra: :mod:`._supervisor`) restarts one that dies and stops them gracefully
(SIGTERM: each hands back its processes; SIGKILL after ``--stop-timeout``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from ..urls import mask_url
from . import _supervisor
from ._supervisor import WATCHER, Files
from .base import (
    ENV_BROKER,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_command,
    add_subcommands,
    int_at_least,
    positive_float,
)
from .config import ENV_PROFILE
from .worker import parse_queue, queues_of

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["DEFAULT_PROFILE", "STOP_TIMEOUT", "register"]

#: The state directory's name when no profile is chosen.
DEFAULT_PROFILE = "default"
#: Seconds a worker has to stop after SIGTERM (hand back its processes) before it gets SIGKILL.
STOP_TIMEOUT = 30.0
#: Seconds ``stop`` waits beyond the workers' grace for the supervisor to exit before it kills what is left.
_EXIT_MARGIN = 10.0
#: Seconds between two looks at the supervisor while ``start``/``stop`` wait for it.
_POLL = 0.2
#: A line of ``worker.out``: circus's ``<time> [<pid>] | `` prefix, then the worker's readiness line.
_READY_LINE = re.compile(r"\[(\d+)\] \| worker ready$", re.MULTILINE)
#: At most this much of ``worker.out`` is read per look (one short line per worker start).
_READY_BYTES = 1024 * 1024
#: Lines ``logs`` prints by default.
LOG_LINES = 50


def register(subparsers: SubParsers) -> None:
    """Add ``daemon`` and its actions."""
    p = add_command(subparsers, "daemon", "run N workers in the background, restarted when they die (per profile)")
    actions = add_subcommands(p, "action", "ACTION")

    start = add_command(
        actions, "start", "start the daemon with N workers (default 1); returns once each is ready (--timeout)"
    )
    start.add_argument("number", metavar="N", nargs="?", type=int_at_least(1), default=1, help="workers (default 1)")
    start.add_argument("--persister", metavar="URL", help="the workers' store (default: the profile's store)")
    start.add_argument("--allow", metavar="MODULE", action="append", help="module the workers may run (required)")
    as_worker = "as for `process-comms worker` (see its --help)"
    start.add_argument(
        "--queue", metavar="NAME[=SLOTS]", dest="queues", type=parse_queue, action="append", help=as_worker
    )
    start.add_argument("--slots", metavar="N", type=int_at_least(0), help=as_worker)
    start.add_argument("--prefetch", metavar="N", type=int_at_least(0), default=0, help=as_worker)
    start.add_argument("--claim-ttl", metavar="S", type=positive_float, help=as_worker)
    start.add_argument("--records", choices=("on", "off"), help=as_worker)
    start.add_argument("--max-processes", metavar="N", type=int_at_least(0), help=as_worker)
    start.add_argument(
        "--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help=as_worker
    )
    start.add_argument(
        "--stop-timeout",
        metavar="S",
        type=positive_float,
        default=STOP_TIMEOUT,
        help=f"seconds a worker has to stop after SIGTERM before SIGKILL (default {STOP_TIMEOUT:g})",
    )
    start.set_defaults(run=_start)

    for name, help_text, run in (("incr", "add N workers (default 1)", _incr), ("decr", "stop N workers", _decr)):
        q = add_command(actions, name, help_text)
        q.add_argument("number", metavar="N", nargs="?", type=int_at_least(1), default=1)
        q.set_defaults(run=run, needs_broker=False)
    add_command(actions, "status", "the supervisor's pid and the workers' pids").set_defaults(
        run=_status, needs_broker=False
    )
    add_command(actions, "stop", "stop the workers gracefully, then the supervisor").set_defaults(
        run=_stop, needs_broker=False
    )
    logs = add_command(actions, "logs", "the last lines of the workers' log")
    logs.add_argument("--lines", metavar="N", type=int_at_least(1), default=LOG_LINES, help=f"default {LOG_LINES}")
    logs.set_defaults(run=_logs, needs_broker=False)


# -- the state of one profile's daemon ---------------------------------------------------------------
def _profile(args: argparse.Namespace) -> str:
    return str(args.profile or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE)


def _files(args: argparse.Namespace) -> Files:
    _supervisor.require_circus()
    return Files(_supervisor.state_dir(_profile(args)))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left unreaped by its new parent counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is the answer


def _running(files: Files, ctx: Context) -> int | None:
    """The supervisor's pid when it runs and answers; a stale pid file (no such process) is removed."""
    pid = files.read_pid()
    if pid is None:
        return None
    if not _alive(pid) or not files.is_supervisor(pid):  # a supervisor that was killed left its pid file
        files.pid.unlink(missing_ok=True)
        return None
    _supervisor.call(files, "numprocesses", ctx.timeout, name=WATCHER)  # a live pid that is not ours fails here
    return pid


def _not_running(files: Files, args: argparse.Namespace) -> CliError:
    return CliError(
        f"no daemon runs for profile {_profile(args)!r} (no live pid in {files.pid}); "
        "start one with: process-comms daemon start",
        EXIT_ERROR,
    )


def _pids(files: Files, ctx: Context) -> list[int]:
    return sorted(_supervisor.numbers_in(_supervisor.call(files, "list", ctx.timeout, name=WATCHER), "pids"))


# -- actions ----------------------------------------------------------------------------------------
def _worker_argv(args: argparse.Namespace, ctx: Context, persister: str) -> list[str]:
    """``python -m process_comms.cli <names> worker <options>``: what circus runs N times (no broker URL here)."""
    argv = [sys.executable, "-m", "process_comms.cli", "--timeout", f"{ctx.timeout:g}"]
    for option, value in ctx.comm_options().items():
        if option in ("message_exchange", "task_exchange", "task_queue"):
            argv += [f"--{option.replace('_', '-')}", str(value)]
    argv += ["worker", "--persister", persister, "--prefetch", str(args.prefetch)]
    for module in args.allow:
        argv += ["--allow", module]
    for name, slots in args.queues or ():
        argv += ["--queue", name if slots is None else f"{name}={slots}"]
    for option in ("slots", "claim_ttl", "records", "max_processes", "log_level"):
        if getattr(args, option) is not None:
            argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    return argv


def _start(args: argparse.Namespace, ctx: Context) -> int:
    files = _files(args)
    running = _running(files, ctx)
    if running is not None:
        raise CliError(f"the daemon of profile {_profile(args)!r} already runs (supervisor pid {running})", EXIT_ERROR)
    # usage errors here, not N times in the worker log
    queues_of(args.queues, args.slots, args.prefetch)
    persister = args.persister or ctx.store
    if not persister:
        raise CliError("the workers need a store: give --persister URL or use a --profile with a store", EXIT_USAGE)
    if not args.allow:
        raise CliError("the workers need --allow MODULE (the modules whose processes they may run)", EXIT_USAGE)
    files.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    files.endpoint(files.control)  # a state directory too long for a socket: said now, not in circus.log
    spec = {
        "argv": _worker_argv(args, ctx, persister),
        "numprocesses": args.number,
        "cwd": os.getcwd(),
        "stop_timeout": args.stop_timeout,
    }
    fd = os.open(files.spec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the store URL may hold a password
    with os.fdopen(fd, "w") as out:
        json.dump(spec, out, indent=2)
    env = {k: v for k, v in os.environ.items() if k != ENV_PROFILE}  # the argv names everything the profile did
    env[ENV_BROKER] = ctx.broker  # in the environment, not on a command line that `ps` shows
    ready_from = files.worker_out.stat().st_size if files.worker_out.exists() else 0  # this start's lines only
    with open(files.supervisor_log, "ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "process_comms.cli._supervisor", str(files.root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # not killed with the shell that started it
        )
    try:
        pids = _wait_started(supervisor, files, args.number, ctx, ready_from)
    except BaseException:
        _abandon(supervisor, files, args.stop_timeout)
        raise
    if ctx.json:
        ctx.print_json({"profile": _profile(args), "supervisor": supervisor.pid, "workers": pids})
    else:
        ctx.print(
            f"daemon started for profile {_profile(args)!r} on {mask_url(ctx.broker)}: "
            f"supervisor pid {supervisor.pid}, "
            f"{len(pids)} worker(s) (pids {', '.join(map(str, pids))}); log: {files.worker_log}"
        )
    supervisor.returncode = 0  # it outlives this command on purpose: no "still running" warning at exit
    return EXIT_OK


def _ready(files: Files, offset: int) -> set[int]:
    """The pids that printed ``worker ready`` (the worker's readiness line) in ``worker.out`` after ``offset``."""
    try:
        with open(files.worker_out, "rb") as out:
            out.seek(offset)
            text = out.read(_READY_BYTES).decode(errors="replace")
    except OSError:
        return set()
    return {int(match) for match in _READY_LINE.findall(text)}


def _last_line(path: Path) -> str:
    """The last non-empty line a worker wrote in ``path`` (without circus's prefix)."""
    try:
        with open(path, errors="replace") as log:
            texts = [line.split(" | ", 1)[-1].strip() for line in deque(log, maxlen=20)]
    except OSError:
        return ""
    return next((text for text in reversed(texts) if text), "")


def _wait_started(
    supervisor: subprocess.Popen[bytes], files: Files, number: int, ctx: Context, ready_from: int
) -> list[int]:
    """The workers' pids once ``number`` of them said ``worker ready``; an exit or a timeout raises CliError."""
    deadline = time.monotonic() + ctx.timeout
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise CliError(f"the supervisor exited with code {supervisor.returncode}: see {files.supervisor_log}")
        if files.read_pid() == supervisor.pid:
            try:
                pids = _pids(files, ctx)
            except CliError:
                pids = []
            if len(pids) >= number and set(pids) <= _ready(files, ready_from):
                return pids
        time.sleep(_POLL)
    raise CliError(
        f"the daemon's {number} worker(s) were not ready within {ctx.timeout:g} s, so it was stopped; "
        f"the last line of {files.worker_log}: {_last_line(files.worker_log) or '(empty)'}"
    )


def _abandon(supervisor: subprocess.Popen[bytes], files: Files, stop_timeout: float) -> None:
    """Stop a supervisor that did not start (SIGTERM: it stops its workers), SIGKILL if it outlives the grace."""
    if supervisor.poll() is None:
        supervisor.terminate()
        try:
            supervisor.wait(stop_timeout + _EXIT_MARGIN)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait(_EXIT_MARGIN)
    files.pid.unlink(missing_ok=True)


def _status(args: argparse.Namespace, ctx: Context) -> int:
    files = _files(args)
    pid = _running(files, ctx)
    if pid is None:
        raise _not_running(files, args)
    pids = _pids(files, ctx)
    wanted = int(
        _supervisor.number_in(_supervisor.call(files, "numprocesses", ctx.timeout, name=WATCHER), "numprocesses")
    )
    if ctx.json:
        ctx.print_json(
            {
                "profile": _profile(args),
                "supervisor": pid,
                "workers": pids,
                "numprocesses": wanted,
                "state_dir": str(files.root),
                "log": str(files.worker_log),
            }
        )
        return EXIT_OK
    ctx.print(f"daemon of profile {_profile(args)!r}: supervisor pid {pid}, {len(pids)} of {wanted} worker(s) running")
    ctx.print(f"workers: {', '.join(map(str, pids)) or '-'}")
    ctx.print(f"logs: {files.worker_log} (workers), {files.supervisor_log} (supervisor)")
    return EXIT_OK


def _change(args: argparse.Namespace, ctx: Context, command: str) -> int:
    files = _files(args)
    if _running(files, ctx) is None:
        raise _not_running(files, args)
    if command == "decr":
        answer = _supervisor.call(files, "numprocesses", ctx.timeout, name=WATCHER)
        current = int(_supervisor.number_in(answer, "numprocesses"))
        if args.number > current:
            raise CliError(f"only {current} worker(s) run: cannot stop {args.number}", EXIT_USAGE)
    stop_timeout = float(json.loads(files.spec.read_text())["stop_timeout"])
    # decr waits for the stopped workers, each up to its grace: the answer may take that long
    answer = _supervisor.call(files, command, ctx.timeout + stop_timeout, name=WATCHER, nb=args.number, waiting=True)
    count = int(_supervisor.number_in(answer, "numprocesses"))
    if ctx.json:
        ctx.print_json({"profile": _profile(args), "numprocesses": count})
    else:
        ctx.print(f"daemon of profile {_profile(args)!r}: {count} worker(s)")
    return EXIT_OK


def _incr(args: argparse.Namespace, ctx: Context) -> int:
    return _change(args, ctx, "incr")


def _decr(args: argparse.Namespace, ctx: Context) -> int:
    return _change(args, ctx, "decr")


def _stop(args: argparse.Namespace, ctx: Context) -> int:
    """Quit the supervisor (it stops each worker: SIGTERM, SIGKILL after the grace); kill what outlives it."""
    files = _files(args)
    pid = _running(files, ctx)
    if pid is None:
        ctx.print(f"no daemon runs for profile {_profile(args)!r}")
        return EXIT_OK
    workers = _pids(files, ctx)
    stop_timeout = float(json.loads(files.spec.read_text())["stop_timeout"])
    try:
        _supervisor.call(files, "quit", ctx.timeout, waiting=False)
    except CliError:
        pass  # it may exit before it answers; its pid says whether it went
    deadline = time.monotonic() + stop_timeout + _EXIT_MARGIN
    while time.monotonic() < deadline and any(_alive(one) for one in (pid, *workers)):
        time.sleep(_POLL)
    forced = [one for one in (pid, *workers) if _alive(one)]
    for one in forced:
        try:
            os.kill(one, signal.SIGKILL)
        except ProcessLookupError:
            pass
    files.pid.unlink(missing_ok=True)
    for path in (files.control, files.events):
        path.unlink(missing_ok=True)
    note = f"; killed {len(forced)} that did not stop in time: {forced}" if forced else ""
    ctx.print(f"daemon of profile {_profile(args)!r} stopped ({len(workers)} worker(s)){note}")
    return EXIT_OK


def _logs(args: argparse.Namespace, ctx: Context) -> int:
    files = _files(args)
    try:
        with open(files.worker_log, errors="replace") as log:
            lines = deque(log, maxlen=args.lines)  # bounded: the file may be ~10 MiB
    except FileNotFoundError:
        raise CliError(f"no worker log yet for profile {_profile(args)!r} ({files.worker_log})", EXIT_ERROR) from None
    for line in lines:
        ctx.print(line.rstrip("\n"))
    return EXIT_OK
