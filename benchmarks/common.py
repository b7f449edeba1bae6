"""Names shared by the benchmark modules: sizes, implementation labels, exchange names, error text."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
ALL_WORKLOADS = ("a", "b", "c", "d", "e", "f", "g", "g.l", "h", "costs", "codec", "facade", "wakeup")
#: Full-scale sizes (multiplied by --scale).
SIZES = {
    "a": 1000,
    "b": 2000,
    "c": 200,
    "d": 1000,
    "e": 200,
    "f": 200,
    "g.seq": 500,
    "g.pipe": 2000,
    "g.l": 1000,
    "h.a": 500,
    "h.b": 2000,
    "h.d": 1000,
    "h.e": 200,
    "costs": 600,
    "codec": 5000,
    "facade": 2000,
    "wakeup": 40,
}
PC = "process_comms"
PL = "plumpy"
RAW = "raw aio-pika"
RAW_T = "raw aio-pika, loop on a thread"
PC_LOOP = "process_comms asyncio, own loop"
ECHO_KEY = "[rpc].echo"
#: The launch-shaped raw floor's result (workload g.l), pipelined with publisher confirms as g.pipe+confirms.
LAUNCH_FLOOR = "g.l.pipe+confirms"
#: The same launches one at a time (row c's shape).
LAUNCH_FLOOR_SEQ = "g.l.seq+confirms"


def names(run_id: str, lib: str) -> dict[str, str]:
    prefix = f"pcbench-{run_id}-{lib}"
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


def flags(exchange_names: dict[str, str]) -> list[str]:
    return [
        "--message-exchange",
        exchange_names["message_exchange"],
        "--task-exchange",
        exchange_names["task_exchange"],
        "--task-queue",
        exchange_names["task_queue"],
    ]


def short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text[:140]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def serve_until_stopped(serve: Callable[[asyncio.Event], Coroutine[object, None, None]]) -> int:
    """Run ``serve(stopped)`` on a fresh loop until SIGTERM/SIGINT or until stdin closes (the runner's end): how
    the bare floor workers (worker_raw.py, worker_raw_launch.py) live and stop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)

    def watch_stdin() -> None:
        try:
            sys.stdin.read()
        finally:
            loop.call_soon_threadsafe(stopped.set)

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    try:
        loop.run_until_complete(serve(stopped))
    finally:
        loop.close()
    return 0
