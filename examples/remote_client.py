"""A client in its own OS process: launches processes on a remote worker and controls them over RabbitMQ.

Start a worker first (``python examples/remote_worker.py``), then, from the repository root::

    python examples/remote_client.py [BROKER_URL] [--prefix NAME]

with the same broker URL and prefix as the worker (the URL defaults to ``$PROCESS_COMMS_BROKER``, then
``amqp://guest:guest@127.0.0.1:5672/``). The client

1. launches a countdown and waits for its outputs;
2. launches a long waiter without waiting (``nowait``), polls its status until it runs, pauses it,
   plays it and kills it;
3. launches three persisted countdowns with pids of its choosing (so it can control them while it
   waits for their outputs), pauses and plays them together, and waits for all of them with a
   progress display (on stderr).

It exits 0 when every step answered as expected.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import process_comms
from process_comms.client.display import Progress, status_table

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


def poll_status(
    controller: process_comms.RemoteProcessThreadController,
    pid: Any,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Ask for the status of ``pid`` until ``until(status)`` holds; at most ``timeout`` seconds.

    An unreachable process is asked again: a worker may not have started it yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            status: dict[str, Any] = controller.get_status(pid).result(timeout)
        except process_comms.ProcessUnreachable as exc:  # not started yet (the task is on its way to a worker)
            answer: Any = exc
        else:
            if until(status):
                return status
            answer = status
        if time.monotonic() > deadline:
            raise process_comms.TimeoutError(f"process {pid} did not reach the expected status: {answer}")
        time.sleep(0.05)


def check(condition: bool, what: str) -> None:
    """Fail loudly (exit status 1) when the system did not answer as documented."""
    if not condition:
        raise SystemExit(f"unexpected: {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Launch and control processes on a remote worker.")
    parser.add_argument("broker", nargs="?", default=os.environ.get("PROCESS_COMMS_BROKER", DEFAULT_BROKER))
    parser.add_argument("--prefix", default=None, help="prefix of the exchange and queue names (as the worker's)")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples.processes import Countdown, LongWaiter  # importable once the repository root is on the path

    comm = process_comms.connect(args.broker, **broker_names(args.prefix))
    with process_comms.RemoteProcessThreadController(comm, rpc_timeout=10, task_timeout=60) as controller:
        # 1. launch and wait for the outputs
        try:
            outputs = controller.launch_process(Countdown, init_kwargs={"inputs": {"start": 3}}).result(60)
        except process_comms.TimeoutError:
            print("no worker answered: is examples/remote_worker.py running with the same broker and prefix?")
            return 1
        print("countdown outputs:", outputs)
        check(outputs == {"liftoff": True, "steps": 3, "resumed_from": 0}, f"outputs {outputs}")

        # 2. launch without waiting, then poll, pause, play and kill
        pid = controller.launch_process(LongWaiter, init_kwargs={"inputs": {"seconds": 600}}, nowait=True).result(30)
        print("launched long waiter:", pid)
        status = poll_status(controller, pid, lambda s: s["state_name"] in ("running", "waiting"))
        print("state:", status["state_name"], "on host", status["host"])
        check(controller.pause_process(pid, "coffee break").result(10) is True, "pause answers True")
        status = controller.get_status(pid).result(10)
        print("paused:", status["paused"], "status:", status["status"])
        check(status["paused"] is True and status["status"] == "coffee break", f"paused status {status}")
        check(controller.play_process(pid).result(10) is True, "play answers True")
        status = poll_status(controller, pid, lambda s: not s["paused"])
        print("played: paused =", status["paused"])
        check(controller.kill_process(pid, "enough waiting").result(10) is True, "kill answers True")
        print("killed:", pid)
        try:
            status = controller.get_status(pid).result(10)
            print("after the kill: state", status["state_name"])  # asked before its route was removed
        except process_comms.ProcessUnreachable as exc:
            print("after the kill:", type(exc).__name__)
        except process_comms.RemoteError as exc:
            # asked while the worker was removing the ended process's route: same meaning as unreachable
            check(exc.remote_type == "LookupError", f"status after the kill: {exc!r}")
            print("after the kill: ProcessUnreachable (reported as a LookupError: its route was being removed)")

        # 3. many at once: persisted countdowns launched with pids of our choosing, so that we can control them
        #    while waiting for their outputs; paused and played together, then waited for with a progress display
        pids = [uuid.uuid4() for _ in range(3)]
        results = [
            controller.launch_process(
                Countdown, init_kwargs={"inputs": {"start": 40, "delay": 0.05}, "pid": pid}, persist=True
            )
            for pid in pids
        ]
        for pid in pids:  # these launches answer at the end: poll until a worker runs each process
            poll_status(controller, pid, lambda s: True)
        paused = process_comms.wait_all(controller.pause_many(pids, "all hold"), timeout=10)
        check(all(v is True for v in paused.values()), f"pause_many {paused}")
        table = status_table(controller.get_status_many(pids), timeout=10)
        print("after pause_many:")
        print(table)
        check(all(row[2] == "yes" for row in table.rows), "every countdown paused")
        played = process_comms.wait_all(controller.play_many(pids), timeout=10)
        check(all(v is True for v in played.values()), f"play_many {played}")
        outputs_list = Progress("countdowns").track(results, timeout=60)
        print("countdowns finished:", outputs_list)
        check(all(isinstance(o, dict) and o["steps"] == 40 for o in outputs_list), f"outputs {outputs_list}")
    print("client done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
