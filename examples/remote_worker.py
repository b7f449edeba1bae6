"""A worker in its own OS process: runs the processes that clients launch over RabbitMQ.

Run from the repository root (the worker loads ``examples.processes`` by name)::

    python examples/remote_worker.py [BROKER_URL] [--prefix NAME] [--db PATH]

then, in another terminal, ``python examples/remote_client.py`` with the same URL and prefix.

The broker URL comes from the command line, else from ``$PROCESS_COMMS_BROKER``, else
``amqp://guest:guest@127.0.0.1:5672/``. With ``--prefix NAME`` the exchanges and the task queue are
``NAME.messages``, ``NAME.tasks`` and ``NAME.process.queue`` (otherwise kiwipy's default names), so
several setups can share one broker. Checkpoints go to a SQLite file (``--db``).

It prints ``worker ready`` once it takes tasks. SIGTERM or Ctrl-C stops it gracefully: it takes no new
tasks, checkpoints the processes it runs and hands their tasks back to the queue for another worker.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import process_comms

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parent.parent


def broker_names(prefix: str | None) -> dict[str, Any]:
    """Exchange and queue names for ``prefix`` (none: kiwipy's defaults)."""
    if not prefix:
        return {}
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("broker", nargs="?", default=os.environ.get("PROCESS_COMMS_BROKER", DEFAULT_BROKER))
    parser.add_argument("--prefix", default=None, help="prefix of the exchange and queue names")
    parser.add_argument(
        "--db",
        default=str(Path(tempfile.gettempdir()) / "process_comms_examples.db"),
        help="SQLite file for checkpoints (default: in the temp directory)",
    )
    parser.add_argument("--prefetch", type=int, default=0, help="most tasks taken at once (0: no limit)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if str(ROOT) not in sys.path:  # so that the worker can import examples.processes by name
        sys.path.insert(0, str(ROOT))

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        print(f"worker got {signal.Signals(signum).name}: stopping", flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    worker = process_comms.Worker(
        args.broker,
        persister=f"sqlite:///{Path(args.db).resolve()}",
        allowed_modules=["examples.processes"],
        task_prefetch_count=args.prefetch,
        **broker_names(args.prefix),
    )
    with worker:
        print(f"worker ready (os pid {os.getpid()}, checkpoints in {args.db})", flush=True)
        while not stop.wait(1.0):  # the signal handler runs between these waits
            pass
        handed_back = worker.stop(graceful=True)
    print(f"worker stopped; handed back {len(handed_back)} process(es)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
