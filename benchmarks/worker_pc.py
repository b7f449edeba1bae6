"""A process_comms worker in its own OS process, for ``benchmarks/run.py``.

Prints ``READY`` on stdout once it consumes tasks; exits on SIGTERM/SIGINT or when stdin closes (so it
never outlives the benchmark), closing the communicator and the launcher with bounded waits.

With ``PC_BENCH_YAPPI=<file>`` in its environment it profiles every thread's CPU time with yappi (which
slows it about fivefold: read it for call counts and shares, not rates) and writes a pstats file at exit.
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
    parser.add_argument("--persister", default="memory://", help="the store of checkpoints and records (a URL)")
    parser.add_argument("--no-records", action="store_true", help="write no process records")
    parser.add_argument("--task-queue-type", default="classic", choices=("classic", "quorum"))
    parser.add_argument(
        "--fleet-worker",
        action="store_true",
        help="run a process_comms.Worker (records service, workers answer) instead of a bare ProcessLauncher",
    )
    parser.add_argument(
        "--max-processes",
        type=int,
        default=0,
        help="with --fleet-worker: recycle after this many processes (exit once they ended; 0: never)",
    )
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
        task_queue_type=args.task_queue_type,
    )
    persister = process_comms.get_persister(args.persister)
    worker: process_comms.Worker | None = None
    if args.fleet_worker:
        worker = process_comms.Worker(
            persister=persister,
            communicator=comm,
            records=not args.no_records,
            max_processes=args.max_processes or None,
        )
        launcher = worker.launcher
        worker.start()
    else:
        launcher = process_comms.ProcessLauncher(persister=persister, records=not args.no_records)
        comm.add_task_subscriber(launcher)
    profile = os.environ.get("PC_BENCH_YAPPI")  # a file: CPU profile of every thread, written at exit
    if profile:
        import yappi

        yappi.set_clock_type("cpu")
        yappi.start()
    try:
        print(f"READY {os.getpid()}", flush=True)
        while not stop.wait(0.5) and not (worker is not None and worker.wait(0)):
            pass  # until stopped, or recycled after --max-processes
    finally:

        def close() -> None:
            if worker is not None:
                worker.stop(graceful=False)  # it closes the launcher and the store
            comm.close()
            if worker is None:
                launcher.close()

        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        closer.join(10)
        if profile:
            yappi.stop()
            yappi.get_func_stats().save(profile, type="pstat")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
