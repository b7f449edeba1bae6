"""A plumpy 0.26 + kiwipy 0.9 worker in its own OS process, wired like an AiiDA daemon worker.

* ``kiwipy.rmq.RmqThreadCommunicator`` (its own I/O loop thread), wrapped in
  ``plumpy.communications.LoopCommunicator`` so that subscriber calls run on the worker's event loop
  (AiiDA: ``plumpy.wrap_communicator(communicator, loop)`` in ``Runner``);
* a ``plumpy.ProcessLauncher`` on that loop subscribed to tasks through the wrapper, with a persister
  and a load context carrying the loop and the communicator (AiiDA's ``ProcessLauncher``);
* every launched process gets the wrapper as its communicator (``bench_procs.PLUMPY_COMMUNICATOR``,
  what AiiDA's runner does), so it is controllable over RPC and emits state broadcasts.

Prints ``READY`` on stdout; exits on SIGTERM/SIGINT or when stdin closes, with bounded waits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plumpy
from kiwipy.rmq import RmqThreadCommunicator

from benchmarks import bench_procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--message-exchange", required=True)
    parser.add_argument("--task-exchange", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument(
        "--asyncio-debug",
        action="store_true",
        help="keep asyncio debug mode on kiwipy's I/O loop (its testing_mode turns it on; off by default)",
    )
    parser.add_argument(
        "--waker-ms",
        type=float,
        default=0.0,
        help="wake the worker loop every N ms (hides plumpy's lost wake-ups, pain-points B1); 0 = never",
    )
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    comm = RmqThreadCommunicator.connect(
        connection_params={"url": args.url},
        message_exchange=args.message_exchange,
        task_exchange=args.task_exchange,
        task_queue=args.task_queue,
        testing_mode=True,
    )
    if not args.asyncio_debug:
        comm.loop().set_debug(False)
    loop_comm = plumpy.communications.LoopCommunicator(comm, loop)
    bench_procs.PLUMPY_COMMUNICATOR = loop_comm
    persister = plumpy.InMemoryPersister()
    load_context = plumpy.LoadSaveContext(loop=loop, communicator=loop_comm)
    launcher = plumpy.ProcessLauncher(loop=loop, persister=persister, load_context=load_context)

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)

    def watch_stdin() -> None:
        try:
            sys.stdin.read()
        finally:
            stop()

    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    background: set[asyncio.Task[None]] = set()
    if args.waker_ms > 0:

        async def waker() -> None:
            while True:
                await asyncio.sleep(args.waker_ms / 1000)

        background.add(loop.create_task(waker()))

    try:
        loop_comm.add_task_subscriber(launcher)
        print(f"READY {os.getpid()}", flush=True)
        loop.run_forever()
    finally:
        closer = threading.Thread(target=comm.close, daemon=True)
        closer.start()
        closer.join(10)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
