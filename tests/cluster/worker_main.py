"""A worker on a RabbitMQ cluster, in its own OS process: every node's URL, a quorum task queue.

``python -m tests.cluster.worker_main '<json config>'`` prints "worker ready" once it takes tasks and
stops gracefully on SIGTERM. Config keys: urls, prefix, persister, prefetch, heartbeat, queue_type (default
``quorum``), log_level (default ``WARNING``).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any

import process_comms


def main() -> int:
    config = json.loads(sys.argv[1])
    logging.basicConfig(level=config.get("log_level", "WARNING"), stream=sys.stderr)
    prefix = config["prefix"]
    worker = process_comms.Worker(
        config["urls"],
        persister=config["persister"],
        allowed_modules=["tests.procs"],
        message_exchange=f"{prefix}.messages",
        task_exchange=f"{prefix}.tasks",
        task_queue=f"{prefix}.process.queue",
        task_queue_type=config.get("queue_type", "quorum"),
        task_prefetch_count=int(config.get("prefetch", 0)),
        heartbeat=int(config.get("heartbeat", 2)),
        reconnect_interval=0.5,
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
