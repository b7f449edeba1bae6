"""The ``process-comms`` command: run a worker, launch processes and control them from a shell.

Synopsis::

    process-comms [--broker URL] [--json] [--timeout S]
                  [--message-exchange N] [--task-exchange N] [--task-queue N] COMMAND ...

    process-comms worker --persister URL --allow MODULE [--allow MODULE ...] [--prefetch N] [--claim-ttl S]
                         [--log-level LEVEL]
    process-comms launch CLASS [--inputs JSON] [--nowait] [--persist]
    process-comms status PID...
    process-comms pause (PID... | --all) [--message TEXT]
    process-comms play  (PID... | --all)
    process-comms kill  (PID... | --all) [--force] [--message TEXT]
    process-comms watch [PID...] [--count N] [--seconds S]
    process-comms queue

The broker URL comes from ``--broker`` or the environment variable ``PROCESS_COMMS_BROKER``; its
password is never printed. The global options may also follow the command. Every wait is bounded by
``--timeout`` (default 30 s), except ``worker`` (runs until SIGTERM/SIGINT) and ``watch`` without
``--count``/``--seconds`` (runs until Ctrl-C). Output is for humans by default; ``--json`` prints JSON
(pids as strings). Errors are one line on stderr: ``process-comms: error: ...``.

Exit codes:
  0  ok
  1  generic error (including a task queue that does not exist, for `queue`)
  2  usage error (bad arguments, no broker URL, invalid pid)
  3  unreachable pid: no worker holds the process (ProcessUnreachable)
  4  timeout: no answer within --timeout (TimeoutError); the remote action may still happen
  5  rejected: the worker refused the task, e.g. a class it does not allow (TaskRejected)
  6  broker unavailable: unreachable, refused the credentials, or the connection was lost
  7  remote failure: the process excepted or was killed (RemoteError, ProcessKilled)
  130 interrupted (Ctrl-C), except for `watch`, where Ctrl-C is the normal end (0)
With several PIDs every pid gets its line and the exit code is the highest of their codes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from .. import defaults
from ..client.controller import RemoteProcessController
from ..client.futures import outcomes
from ..client.thread_controller import RemoteProcessThreadController
from ..errors import (
    BrokerUnavailable,
    InvalidPid,
    ProcessCommsError,
    ProcessUnreachable,
    RemoteError,
    TaskRejected,
)
from ..errors import TimeoutError as PCTimeoutError
from ..transports.base import BroadcastFilter
from ..transports.threaded import ThreadCommunicator, connect
from ..urls import mask_url
from ..wire.loaders import ObjectLoader
from ..worker.worker import Worker

__all__ = [
    "EXIT_BROKER",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
    "parse_pid",
    "wait_many",
]

PROG = "process-comms"
ENV_BROKER = "PROCESS_COMMS_BROKER"
DEFAULT_TIMEOUT = 30.0
#: Extra seconds the command waits beyond --timeout, so the library's own typed deadline fires first.
_GRACE = 2.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_REJECTED = 5
EXIT_BROKER = 6
EXIT_REMOTE = 7
EXIT_INTERRUPTED = 130

_EPILOG = "exit codes:\n" + (__doc__ or "Exit codes:\n").split("Exit codes:\n", 1)[1]  # one text for both


class CliError(Exception):
    """An error the command reports in one line, with the exit code it means."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        """Print the usage error in one line (any URL password masked) and exit with code 2."""
        self.exit(EXIT_USAGE, f"{PROG}: error: {_mask_urls(message)} (see {self.prog} --help)\n")


class _NameOnlyLoader(ObjectLoader):
    """Identifies a class by the ``module:Name`` given, without importing it: only the worker loads code."""

    def load_object(self, identifier: str) -> Any:
        """Never called on the client: the worker loads (and allow-lists) the class."""
        raise CliError("the command line does not import process classes")

    def identify_object(self, obj: Any) -> str:
        """The identifier as given (validated by :func:`_check_class_name`)."""
        return str(obj)


_URL_PASSWORD = re.compile(r"(amqps?://[^:/@\s]*:)[^@\s]*@")


def _mask_urls(text: str) -> str:
    """``text`` with the password of every amqp(s):// URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


class _Scrubber:
    """Removes the broker password from any text before it is printed or logged."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.secrets: list[str] = []
        if url:
            try:
                parts = urlsplit(url)
                user, password = parts.username, parts.password
            except ValueError:
                user = password = None
            # a password equal to the user name is no secret: scrubbing it would mangle every masked URL
            if password and password != user:
                self.secrets = sorted({password, unquote(password)}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if self.url:
            text = text.replace(self.url, mask_url(self.url))
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _mask_urls(text)


class _OneLineFormatter(logging.Formatter):
    """Log records as single lines with the password scrubbed (tracebacks only if ``tracebacks``)."""

    def __init__(self, fmt: str, scrub: _Scrubber, tracebacks: bool) -> None:
        super().__init__(fmt)
        self._scrub = scrub
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self._tracebacks:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self._scrub(super().format(record))


@dataclass
class _Context:
    """What every command needs: the parsed arguments, the broker URL and the output channels."""

    args: argparse.Namespace
    broker: str
    scrub: _Scrubber
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def json(self) -> bool:
        """True with --json."""
        return bool(self.args.json)

    @property
    def timeout(self) -> float:
        """Seconds any wait may last (--timeout)."""
        return float(self.args.timeout)

    @property
    def task_queue(self) -> str:
        """The task queue's name: --task-queue, else the task exchange's name (as the library does)."""
        return str(self.args.task_queue or self.args.task_exchange)

    def comm_options(self) -> dict[str, Any]:
        """Exchange and queue names for :func:`process_comms.connect`."""
        return {
            "message_exchange": self.args.message_exchange,
            "task_exchange": self.args.task_exchange,
            "task_queue": self.task_queue,
            "connect_timeout": min(self.timeout, defaults.CONNECT_TIMEOUT),
        }

    def print(self, text: str) -> None:
        """One line on stdout (flushed: others may be reading it line by line)."""
        print(text, file=self.out, flush=True)

    def print_json(self, value: Any) -> None:
        """``value`` as one line of JSON on stdout."""
        self.print(json.dumps(value, default=_json_default, sort_keys=True))

    def error(self, message: str) -> None:
        """One error line on stderr, password scrubbed."""
        _print_error(message, self.scrub, self.err)

    def warn(self, message: str) -> None:
        """One warning line on stderr."""
        print(f"{PROG}: warning: {self.scrub(message)}", file=self.err, flush=True)


# -- helpers ---------------------------------------------------------------------------------------
def parse_pid(text: str) -> Any:
    """A pid from the command line: a UUID if it parses as one, else an int, else the string itself."""
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    try:
        return int(text)
    except ValueError:
        return text


def exit_code_for(exc: BaseException) -> int:
    """The exit code that an exception means (see the module docstring)."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, (PCTimeoutError, TimeoutError, concurrent.futures.TimeoutError)):
        return EXIT_TIMEOUT
    if isinstance(exc, ProcessUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, TaskRejected):
        return EXIT_REJECTED
    if isinstance(exc, BrokerUnavailable):  # also ConnectionLost
        return EXIT_BROKER
    if isinstance(exc, RemoteError):  # also ProcessKilled
        return EXIT_REMOTE
    if isinstance(exc, InvalidPid):
        return EXIT_USAGE
    return EXIT_ERROR


def _describe(exc: BaseException) -> str:
    """One line saying what went wrong."""
    if isinstance(exc, (ProcessCommsError, CliError)):
        text = str(exc) or type(exc).__name__
    elif isinstance(exc, (concurrent.futures.TimeoutError, TimeoutError)) and not str(exc):
        text = "no answer in time"
    elif isinstance(exc, concurrent.futures.CancelledError):
        text = "the call was cancelled"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def _print_error(message: str, scrub: _Scrubber, stream: TextIO) -> None:
    print(f"{PROG}: error: {scrub(' '.join(message.split()))}", file=stream, flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _error_record(pid: str, exc: BaseException) -> dict[str, Any]:
    return {
        "pid": pid,
        "ok": False,
        "error": _describe(exc),
        "error_type": type(exc).__name__,
        "exit_code": exit_code_for(exc),
    }


def _check_class_name(name: str) -> str:
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr or ":" in attr:
        raise CliError(f"invalid CLASS {name!r}: expected 'module:Name'", EXIT_USAGE)
    return name


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more: {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


class _Progress:
    """A one-line progress bar on a TTY: ``\\r[#####.....] 5/10``."""

    WIDTH = 20

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.update(0)

    def update(self, done: int) -> None:
        """Redraw the bar with ``done`` of ``total`` finished."""
        filled = self.WIDTH * done // self.total if self.total else self.WIDTH
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total}")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        self.stream.write("\n")
        self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def wait_many(
    futures: Mapping[str, concurrent.futures.Future[Any]], timeout: float, progress_stream: TextIO | None = None
) -> dict[str, Any]:
    """Wait for many futures under one deadline; ``{pid: result or exception}``, with a TTY progress bar."""
    progress = (
        _Progress(len(futures), progress_stream)
        if progress_stream is not None and len(futures) > 1 and _is_tty(progress_stream)
        else None
    )
    deadline = time.monotonic() + timeout
    pending = set(futures.values())
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        _, pending = concurrent.futures.wait(pending, timeout=remaining, return_when=concurrent.futures.FIRST_COMPLETED)
        if progress is not None:
            progress.update(len(futures) - len(pending))
    if progress is not None:
        progress.finish()
    results = outcomes(futures, timeout)
    for fut in futures.values():
        fut.cancel()  # stop waiting for what did not answer (a no-op for the others)
    return results


def _connect(ctx: _Context) -> ThreadCommunicator:
    try:
        return connect(ctx.broker, rpc_timeout=ctx.timeout, task_timeout=ctx.timeout, **ctx.comm_options())
    except (TimeoutError, concurrent.futures.TimeoutError):
        raise CliError(f"could not connect to {mask_url(ctx.broker)} in time", EXIT_BROKER) from None


def _unique_pids(texts: Sequence[str]) -> list[tuple[str, Any]]:
    """``[(display form, pid)]`` in order, without duplicates; the display form is what routing uses."""
    seen: dict[str, Any] = {}
    for text in texts:
        pid = parse_pid(text)
        seen.setdefault(str(pid), pid)
    return list(seen.items())


def _state_name(status: dict[str, Any]) -> str:
    state = status.get("state_name") or str(status.get("state", "?")).rsplit(".", 1)[-1].lower()
    return str(state)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


# -- commands --------------------------------------------------------------------------------------
def _cmd_worker(ctx: _Context) -> int:
    """Run a worker until SIGTERM/SIGINT, then stop gracefully (running processes are handed back)."""
    args = ctx.args
    _setup_logging(args.log_level, ctx.scrub, tracebacks=True)
    if args.log_level != "DEBUG":  # the transport's chatter (reconnect notices...) only when debugging
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    if os.getcwd() not in sys.path:  # like `python -m`: allowed modules may live in the current directory
        sys.path.append(os.getcwd())
    log = logging.getLogger("process_comms.cli")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    use_sigwait = hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwait")
    stop_event = threading.Event()
    old_handlers: dict[int, Any] = {}
    if use_sigwait:
        # block before any thread starts: every thread inherits the mask and only sigwait() sees the signals
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    else:  # pragma: no cover - platforms without sigwait
        for sig in stop_signals:
            old_handlers[sig] = signal.signal(sig, lambda *_: stop_event.set())
    try:
        worker = Worker(
            ctx.broker,
            persister=args.persister,
            allowed_modules=args.allow,
            task_prefetch_count=args.prefetch,
            claim_ttl=args.claim_ttl,
            **ctx.comm_options(),
        )
        try:
            worker.start()
        except BaseException:
            worker.stop(graceful=False)
            raise
        log.info(
            "worker on %s, task queue %r, allowed modules %s", mask_url(ctx.broker), ctx.task_queue, list(args.allow)
        )
        ctx.print("worker ready")
        if use_sigwait:
            signum = signal.sigwait(stop_signals)
        else:  # pragma: no cover
            while not stop_event.wait(0.5):
                pass
            signum = signal.SIGTERM
        log.info("received %s: stopping gracefully", signal.Signals(signum).name)
        handed_back = worker.stop(graceful=True)
        if handed_back:
            log.info("handed back %d process(es) to the queue: %s", len(handed_back), [str(p) for p in handed_back])
        return EXIT_OK
    finally:
        if use_sigwait:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for signum_, handler in old_handlers.items():  # pragma: no cover
            signal.signal(signum_, handler)


def _cmd_launch(ctx: _Context) -> int:
    """Launch CLASS on a worker; print its pid (--nowait) or its outputs."""
    args = ctx.args
    class_name = _check_class_name(args.process_class)
    init_kwargs: dict[str, Any] | None = None
    if args.inputs is not None:
        try:
            inputs = json.loads(args.inputs)
        except json.JSONDecodeError as exc:
            raise CliError(f"--inputs is not valid JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(inputs, dict):
            raise CliError("--inputs must be a JSON object", EXIT_USAGE)
        init_kwargs = {"inputs": inputs}
    with _connect(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout, task_timeout=ctx.timeout)
        future = controller.launch_process(
            class_name,
            init_kwargs=init_kwargs,
            persist=args.persist,
            loader=_NameOnlyLoader(),
            nowait=args.nowait,
            timeout=ctx.timeout,
        )
        try:
            result = future.result(ctx.timeout + _GRACE)
        except (PCTimeoutError, TimeoutError, concurrent.futures.TimeoutError) as exc:
            hint = f"; is a worker consuming the task queue {ctx.task_queue!r}?"
            raise CliError(f"{_describe(exc)}{hint}", EXIT_TIMEOUT) from None
    if args.nowait:
        if ctx.json:
            ctx.print_json({"pid": str(result)})
        else:
            ctx.print(str(result))
    else:
        ctx.print_json(result)
    return EXIT_OK


def _record(ctx: _Context, records: list[dict[str, Any]], key: str, outcome: Any) -> int:
    """Add one PID's outcome to the JSON records and report a failure at once; return its exit code."""
    if isinstance(outcome, BaseException):
        records.append(_error_record(key, outcome))
        ctx.error(_describe(outcome))
        return exit_code_for(outcome)
    records.append({"pid": key, "ok": True, "result": outcome})
    return EXIT_OK


def _cmd_status(ctx: _Context) -> int:
    """Print the status of each PID: an aligned table, or JSON."""
    pids = _unique_pids(ctx.args.pids)
    with _connect(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout)
        futures = {key: controller.get_status(pid, ctx.timeout) for key, pid in pids}
        results = wait_many(futures, ctx.timeout + _GRACE, ctx.err)
    code = EXIT_OK
    records: list[dict[str, Any]] = []
    rows = [["PID", "STATE", "PAUSED", "STATUS", "CLASS"]]
    for key, outcome in results.items():
        status = outcome if isinstance(outcome, dict | BaseException) else {"state": str(outcome)}
        code = max(code, _record(ctx, records, key, status))
        if isinstance(status, BaseException):
            continue
        text = status.get("status")
        rows.append(
            [
                key,
                _state_name(status),
                "yes" if status.get("paused") else "no",
                " ".join(str(text).split()) if text else "-",
                str(status.get("class") or status.get("process_string") or "-"),
            ]
        )
    if ctx.json:
        ctx.print_json(records)
    elif len(rows) > 1:
        for line in _table(rows):
            ctx.print(line)
    return code


_DONE_TEXT = {
    ("pause", True): "paused",
    ("pause", False): "not paused: it had already ended",
    ("play", True): "playing",
    ("kill", True): "killed",
    ("kill", False): "not killed: it had already ended otherwise",
}


def _cmd_control(ctx: _Context) -> int:
    """pause / play / kill: each PID (one line each), or every process by broadcast with --all."""
    args = ctx.args
    intent: str = args.command
    message: str | None = getattr(args, "message", None)
    force: bool = bool(getattr(args, "force", False))
    if args.all and args.pids:
        raise CliError(f"{intent}: give PIDs or --all, not both", EXIT_USAGE)
    if not args.all and not args.pids:
        raise CliError(f"{intent}: give at least one PID, or --all", EXIT_USAGE)
    if args.all:
        if force:
            ctx.warn("--force is ignored with --all: a broadcast kill is never forced")
        with _connect(ctx) as comm:
            core = RemoteProcessController(comm, rpc_timeout=ctx.timeout)
            broadcast: dict[str, Callable[[], Coroutine[Any, Any, dict[Any, Any] | None]]] = {
                "pause": lambda: core.pause_all(message),
                "play": core.play_all,
                "kill": lambda: core.kill_all(message),
            }
            comm.submit(broadcast[intent]()).result(ctx.timeout + _GRACE)
        if ctx.json:
            ctx.print_json({"all": True, "intent": intent, "sent": True})
        else:
            ctx.print(f"{intent} sent to every process")
        return EXIT_OK
    pids = _unique_pids(args.pids)
    with _connect(ctx) as comm:
        controller = RemoteProcessThreadController(comm, rpc_timeout=ctx.timeout)
        calls: dict[str, Callable[[Any], concurrent.futures.Future[Any]]] = {
            "pause": lambda pid: controller.pause_process(pid, message, ctx.timeout),
            "play": lambda pid: controller.play_process(pid, ctx.timeout),
            "kill": lambda pid: controller.kill_process(pid, message, force, ctx.timeout),
        }
        futures = {key: calls[intent](pid) for key, pid in pids}
        results = wait_many(futures, ctx.timeout + _GRACE, ctx.err)
    code = EXIT_OK
    records: list[dict[str, Any]] = []
    for key, outcome in results.items():
        code = max(code, _record(ctx, records, key, outcome))
        if not isinstance(outcome, BaseException) and not ctx.json:
            done = _DONE_TEXT.get((intent, bool(outcome)), str(outcome)) if isinstance(outcome, bool) else str(outcome)
            ctx.print(f"{key} {done}")
    if ctx.json:
        ctx.print_json(records)
    return code


class _LoopSafe:
    """Runs a subscriber on the communicator's loop (it only enqueues), so events keep their order."""

    loop_safe = True

    def __init__(self, subscriber: Callable[..., Any]) -> None:
        self._subscriber = subscriber

    def __call__(self, *args: Any) -> Any:
        return self._subscriber(*args)


def _cmd_watch(ctx: _Context) -> int:
    """Print state changes as they happen, one line each, until --count events, --seconds, or Ctrl-C."""
    args = ctx.args
    wanted = {key for key, _ in _unique_pids(args.pids)}
    # SimpleQueue: put() never takes a lock that Ctrl-C could leave held in the main thread's get(), so the
    # loop thread delivering events can never block on it (with queue.Queue, close() then waited in vain)
    events: queue.SimpleQueue[tuple[str, str, str]] = queue.SimpleQueue()

    def on_event(_comm: Any, _body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        parts = str(subject).split(".")
        if len(parts) != 3 or (wanted and str(sender) not in wanted):
            return
        events.put((str(sender), "-" if parts[1] == "None" else parts[1], parts[2]))

    count: int | None = args.count
    seconds: float | None = args.seconds
    # --count alone is still bounded (by --timeout); with neither, watch until Ctrl-C
    limit = seconds if seconds is not None else (ctx.timeout if count is not None else None)
    seen = 0
    with _connect(ctx) as comm:
        comm.add_broadcast_subscriber(_LoopSafe(BroadcastFilter(on_event, subject="state_changed.*")))
        if _is_tty(ctx.err):
            ctx.err.write(f"{PROG}: watching state changes (Ctrl-C to stop)\n")
        deadline = None if limit is None else time.monotonic() + limit
        try:
            while count is None or seen < count:
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    break
                try:
                    pid, old, new = events.get(timeout=wait)
                except queue.Empty:
                    continue
                seen += 1
                if ctx.json:
                    ctx.print_json({"pid": pid, "from": old, "to": new})
                else:
                    ctx.print(f"{pid} {old} -> {new}")
        except KeyboardInterrupt:
            return EXIT_OK
    if count is not None and seen < count and seconds is None:
        raise CliError(f"saw {seen} of {count} state changes within {ctx.timeout:g} s", EXIT_TIMEOUT)
    return EXIT_OK


def _cmd_queue(ctx: _Context) -> int:
    """Ask the broker how many tasks wait in the task queue and how many workers consume it."""
    name = ctx.task_queue
    try:
        params = pika.URLParameters(ctx.broker)
    except Exception as exc:  # noqa: BLE001 - pika raises many kinds for a bad URL
        raise CliError(f"invalid broker URL {mask_url(ctx.broker)}: {_describe(exc)}", EXIT_USAGE) from None
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = ctx.timeout
    params.stack_timeout = ctx.timeout
    params.blocked_connection_timeout = ctx.timeout
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError:
        raise CliError(f"the broker at {mask_url(ctx.broker)} refused the credentials", EXIT_BROKER) from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise CliError(f"could not connect to {mask_url(ctx.broker)}: {_describe(exc)}", EXIT_BROKER) from None
    try:
        channel = connection.channel()
        declared = channel.queue_declare(queue=name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            raise CliError(
                f"the task queue {name!r} does not exist on {mask_url(ctx.broker)} "
                "(no worker or client has used it yet; check --task-queue)",
                EXIT_ERROR,
            ) from None
        raise CliError(f"the broker refused to inspect {name!r}: {exc.reply_text}", EXIT_ERROR) from None
    except pika.exceptions.AMQPError as exc:
        raise CliError(f"lost the broker while inspecting {name!r}: {_describe(exc)}", EXIT_BROKER) from None
    finally:
        try:
            if connection.is_open:
                connection.close()
        except pika.exceptions.AMQPError:
            pass
    messages, consumers = int(declared.method.message_count), int(declared.method.consumer_count)
    if ctx.json:
        ctx.print_json({"queue": name, "messages": messages, "consumers": consumers})
    else:
        ctx.print(f"queue {name}: {messages} task(s) waiting, {consumers} worker(s) consuming")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[_Context], int]] = {
    "worker": _cmd_worker,
    "launch": _cmd_launch,
    "status": _cmd_status,
    "pause": _cmd_control,
    "play": _cmd_control,
    "kill": _cmd_control,
    "watch": _cmd_watch,
    "queue": _cmd_queue,
}


# -- parser ----------------------------------------------------------------------------------------
def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes (after the command too: there they only override what was given)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("--broker", metavar="URL", default=default(None), help=f"amqp:// URL (default: ${ENV_BROKER})")
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON")
    group.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_float,
        default=default(DEFAULT_TIMEOUT),
        help=f"seconds to wait for any answer (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--message-exchange",
        metavar="N",
        default=default(defaults.MESSAGE_EXCHANGE),
        help=f"exchange of RPCs and broadcasts (default {defaults.MESSAGE_EXCHANGE})",
    )
    group.add_argument(
        "--task-exchange",
        metavar="N",
        default=default(defaults.TASK_EXCHANGE),
        help=f"exchange of tasks (default {defaults.TASK_EXCHANGE})",
    )
    group.add_argument(
        "--task-queue", metavar="N", default=default(None), help="queue of tasks (default: the task exchange's name)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``process-comms`` (usage errors exit with code 2 in one line)."""
    parser = _Parser(
        prog=PROG,
        description="Run a worker, launch processes and control them over a message broker.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_global_options(p, suppress=True)
        return p

    p = command("worker", "run a worker that takes tasks until SIGTERM/SIGINT (then stops gracefully)")
    p.add_argument(
        "--persister", metavar="URL", required=True, help="sqlite:///file.db, postgresql://user@host/db or memory://"
    )
    p.add_argument(
        "--allow",
        metavar="MODULE",
        action="append",
        required=True,
        help=(
            "module whose Process subclasses this worker may run (and its submodules), "
            "imported from sys.path or the current directory; repeatable"
        ),
    )
    p.add_argument(
        "--prefetch", metavar="N", type=_non_negative_int, default=0, help="tasks taken at once (0: no limit)"
    )
    p.add_argument(
        "--claim-ttl",
        metavar="S",
        type=float,
        default=30.0,
        help="seconds a dead worker's processes stay claimed before another worker continues them (default 30)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log level on stderr (default INFO)",
    )

    p = command("launch", "launch a process on a worker; print its outputs, or its pid with --nowait")
    p.add_argument("process_class", metavar="CLASS", help="the Process subclass, as 'module:Name'")
    p.add_argument("--inputs", metavar="JSON", help="the process inputs, a JSON object")
    p.add_argument("--nowait", action="store_true", help="print the pid once the process runs, do not wait for it")
    p.add_argument("--persist", action="store_true", help="checkpoint the process with the worker's persister")

    p = command("status", "print the status of processes (pid, state, paused, status text, class)")
    p.add_argument("pids", metavar="PID", nargs="+")

    for name, what in (("pause", "pause"), ("play", "resume"), ("kill", "kill")):
        p = command(name, f"{what} processes by pid, or every process with --all")
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

    p = command("watch", "print state changes as they happen ('<pid> <from> -> <to>'), of all processes or PIDs")
    p.add_argument("pids", metavar="PID", nargs="*")
    p.add_argument("--count", metavar="N", type=_positive_int, help="stop after N events (bounded by --timeout)")
    p.add_argument("--seconds", metavar="S", type=_positive_float, help="stop after S seconds")

    command("queue", "print how many tasks wait in the task queue and how many workers consume it")
    return parser


def _setup_logging(level: str, scrub: _Scrubber, tracebacks: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if tracebacks else f"{PROG}: log: %(name)s: %(message)s"
    handler.setFormatter(_OneLineFormatter(fmt, scrub, tracebacks))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _broker_url(args: argparse.Namespace) -> str:
    url: str | None = args.broker or os.environ.get(ENV_BROKER) or None
    if not url:
        raise CliError(f"no broker URL: give --broker URL or set {ENV_BROKER}", EXIT_USAGE)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("amqp", "amqps"):
        raise CliError(f"unsupported broker URL {mask_url(url)!r}: expected amqp:// or amqps://", EXIT_USAGE)
    return url


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``process-comms`` with ``argv`` (default: the command line) and return its exit code."""
    args = build_parser().parse_args(argv)
    scrub = _Scrubber(args.broker or os.environ.get(ENV_BROKER))
    try:
        broker = _broker_url(args)
        ctx = _Context(args=args, broker=broker, scrub=scrub)
        if args.command != "worker":
            # a client reports its errors itself, in one line: library logs would only repeat them
            _setup_logging("ERROR", scrub, tracebacks=False)
            logging.getLogger("pika").setLevel(logging.CRITICAL + 1)
        return _COMMANDS[args.command](ctx)
    except KeyboardInterrupt:
        _print_error("interrupted: stopped waiting (what was sent may still happen)", scrub, sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:  # stdout was closed early (e.g. `| head`): do not complain again at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - every error is one line and an exit code, never a traceback
        _print_error(_describe(exc), scrub, sys.stderr)
        return exit_code_for(exc)


def _entry() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
