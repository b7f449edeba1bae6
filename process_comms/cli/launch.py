"""``process-comms launch``: launch a process on a worker; print its outputs, or its pid with --nowait."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import uuid
from typing import TYPE_CHECKING

from ..client.thread_controller import RemoteProcessThreadController
from ..errors import InvalidLaunchOption
from ..errors import TimeoutError as PCTimeoutError
from ..wire.messages import LABEL_MAX_CHARS, ObjectLoader, check_label, check_time_limit
from ._common import GRACE, connect_from, is_tty, parse_pid
from .base import EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CliError, add_command, describe, positive_float

if TYPE_CHECKING:
    from ._common import Context
    from .base import SubParsers

__all__ = ["register", "run"]


class _NameOnlyLoader(ObjectLoader):
    """Identifies a class by the ``module:Name`` given, without importing it: only the worker loads code."""

    def load_object(self, identifier: str) -> object:
        """Never called on the client: the worker loads (and allow-lists) the class."""
        raise CliError("the command line does not import process classes")

    def identify_object(self, obj: object) -> str:
        """The identifier as given (validated by :func:`_check_class_name`)."""
        return str(obj)


def _check_class_name(name: str) -> str:
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr or ":" in attr:
        raise CliError(f"invalid CLASS {name!r}: expected 'module:Name'", EXIT_USAGE)
    return name


def register(subparsers: SubParsers) -> None:
    """Add ``launch`` and its options."""
    p = add_command(subparsers, "launch", "launch a process on a worker; print its outputs, or its pid with --nowait")
    p.add_argument("process_class", metavar="CLASS", help="the Process subclass, as 'module:Name'")
    p.add_argument("--inputs", metavar="JSON", help="the process inputs, a JSON object")
    p.add_argument("--nowait", action="store_true", help="print the pid once the process runs, do not wait for it")
    p.add_argument("--persist", action="store_true", help="checkpoint the process with the worker's persister")
    p.add_argument(
        "--pid",
        metavar="PID",
        help="the new process's pid (default: a new UUID); a pid is used once: one that has a process is refused",
    )
    p.add_argument(
        "--label", metavar="TEXT", help=f"a name to find the process by (list --label), at most {LABEL_MAX_CHARS} chars"
    )
    p.add_argument(
        "--time-limit",
        metavar="SECONDS",
        type=positive_float,
        help="its worker kills it after SECONDS (paused or not; also after this command has exited)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Launch CLASS on a worker; print its pid (--nowait) or its outputs."""
    class_name = _check_class_name(args.process_class)
    try:
        check_label(args.label), check_time_limit(args.time_limit)
    except InvalidLaunchOption as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    init_kwargs: dict[str, object] | None = None
    if args.inputs is not None:
        try:
            inputs = json.loads(args.inputs)
        except json.JSONDecodeError as exc:
            raise CliError(f"--inputs is not valid JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(inputs, dict):
            raise CliError("--inputs must be a JSON object", EXIT_USAGE)
        init_kwargs = {"inputs": inputs}
    # the pid is chosen here, before sending (workers and plumpy's Process take init_kwargs["pid"]): a launch
    # that is not answered in time, or interrupted, still names the process it may have started
    pid = uuid.uuid4() if args.pid is None else parse_pid(args.pid)
    init_kwargs = {**(init_kwargs or {}), "pid": pid}
    if is_tty(ctx.err):  # off a terminal the error line is the only one (Ctrl-C still prints the pid)
        ctx.err.write(f"process-comms: launching process {pid}\n")
        ctx.err.flush()
    with connect_from(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout, task_timeout=ctx.timeout)
        future = controller.launch_process(
            class_name,
            init_kwargs=init_kwargs,
            persist=args.persist,
            loader=_NameOnlyLoader(),
            nowait=args.nowait,
            timeout=ctx.timeout,
            label=args.label,
            time_limit=args.time_limit,
        )
        try:
            result = future.result(ctx.timeout + GRACE)
        except KeyboardInterrupt:
            ctx.error(
                f"interrupted: process {pid} may still run or wait in the queue; end it: process-comms kill {pid}"
            )
            return EXIT_INTERRUPTED
        except (PCTimeoutError, TimeoutError, concurrent.futures.TimeoutError) as exc:
            if args.nowait:  # stdout is the pid, as when the answer comes in time
                ctx.print(json.dumps({"pid": str(pid)}) if ctx.json else str(pid))
            raise CliError(
                f"{describe(exc)}: process {pid} was sent and may be running, or waiting in the task queue "
                f"{ctx.task_queue!r} (is a worker consuming it?); see: process-comms status {pid}",
                EXIT_TIMEOUT,
            ) from None
    if args.nowait:
        if ctx.json:
            ctx.print_json({"pid": str(result)})
        else:
            ctx.print(str(result))
    else:
        ctx.print_json(result)
    return EXIT_OK
