"""A process_comms worker: ``process_comms.connect`` + ``ProcessLauncher``, processes from ``tests.procs``.

``python -m tests.integration.peers.pc_worker '<json config>'``. Prints ``READY`` when subscribed;
exits when its stdin closes.
"""

from __future__ import annotations

import json
import sys

import process_comms


def main() -> None:
    config = json.loads(sys.argv[1])
    comm = process_comms.connect(
        config["url"],
        message_exchange=config["message_exchange"],
        task_exchange=config["task_exchange"],
        task_queue=config["task_queue"],
        testing_mode=config.get("testing_mode", True),
    )
    sqlite = config.get("sqlite")
    persister = process_comms.SqlPersister(f"sqlite:///{sqlite}") if sqlite else process_comms.InMemoryPersister()
    launcher = process_comms.ProcessLauncher(persister=persister)
    comm.add_task_subscriber(launcher)
    print("READY", flush=True)
    try:
        sys.stdin.read()
    finally:
        comm.close()
        launcher.close()


if __name__ == "__main__":
    main()
