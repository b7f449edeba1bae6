"""A worker in its own OS process, for fault tests: prints "worker ready", stops gracefully on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import process_comms


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--persister", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--claim-ttl", type=float, default=2.0)
    parser.add_argument("--heartbeat", type=int, default=None, help="AMQP heartbeat (s); default: the broker's")
    parser.add_argument("--queue", action="append", default=None, help="NAME=SLOTS, repeatable (Worker queues=)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    options: dict[str, Any] = {} if args.heartbeat is None else {"heartbeat": args.heartbeat}
    queues = None
    if args.queue:
        queues = {name: int(slots) for name, _, slots in (spec.partition("=") for spec in args.queue)}
    worker = process_comms.Worker(
        args.broker,
        persister=args.persister,
        allowed_modules=["tests.procs"],
        message_exchange=f"{args.prefix}.messages",
        task_exchange=f"{args.prefix}.tasks",
        task_queue=f"{args.prefix}.process.queue",
        task_prefetch_count=args.prefetch,
        claim_ttl=args.claim_ttl,
        queues=queues,
        **options,
    )

    def on_signal(_signum: int, _frame: Any) -> None:
        worker.stop(graceful=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    print("worker ready", flush=True)
    while not worker.wait(1.0):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
