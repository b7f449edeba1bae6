"""A process_comms worker in its own OS process, for ``benchmarks/run.py``.

Prints ``READY`` on stdout once it consumes tasks; exits on SIGTERM/SIGINT or when stdin closes (so it
never outlives the benchmark), closing the communicator and the launcher with bounded waits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import process_comms
from benchmarks import bench_procs  # noqa: F401  (importable before the first task arrives)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--message-exchange", required=True)
    parser.add_argument("--task-exchange", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--codec", default="yaml")
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:
        try:
            sys.stdin.read()
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    comm = process_comms.connect(
        args.url,
        message_exchange=args.message_exchange,
        task_exchange=args.task_exchange,
        task_queue=args.task_queue,
        testing_mode=True,
        codec=args.codec,
    )
    launcher = process_comms.ProcessLauncher(persister=process_comms.InMemoryPersister())
    try:
        comm.add_task_subscriber(launcher)
        print(f"READY {os.getpid()}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        closer = threading.Thread(target=lambda: (comm.close(), launcher.close()), daemon=True)
        closer.start()
        closer.join(10)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
