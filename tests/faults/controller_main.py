"""A controller in its own OS process, for the controller-death test: launches, prints the pids, waits."""

from __future__ import annotations

import argparse
import sys
import threading
import uuid

import process_comms


def _wait_running(ctl: process_comms.RemoteProcessThreadController, pid: uuid.UUID) -> None:
    for _ in range(300):
        try:
            ctl.get_status(pid, timeout=5).result(10)
            return
        except process_comms.ProcessUnreachable:
            threading.Event().wait(0.1)  # poll interval
    raise SystemExit(f"process {pid} never started")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    comm = process_comms.connect(
        args.broker,
        message_exchange=f"{args.prefix}.messages",
        task_exchange=f"{args.prefix}.tasks",
        task_queue=f"{args.prefix}.process.queue",
    )
    ctl = process_comms.RemoteProcessThreadController(comm)
    pids = [uuid.uuid4() for _ in range(args.count)]
    futures = [
        # half wait for their outputs (the worker holds those tasks), half only for the pid
        ctl.launch_process("tests.procs:Waiter", init_kwargs={"inputs": {}, "pid": pid}, nowait=bool(n % 2))
        for n, pid in enumerate(pids)
    ]
    for pid, fut in zip(pids, futures, strict=True):
        if fut in futures[1::2]:
            fut.result(60)  # nowait: the pid came back
        else:
            _wait_running(ctl, pid)  # the launch was taken; its outputs will never be read here
    print(" ".join(str(pid) for pid in pids), flush=True)
    threading.Event().wait(600)  # until killed (bounded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
