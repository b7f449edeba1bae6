"""Crash and continue: a worker dies mid-process, another one continues it from its last checkpoint.

Needs RabbitMQ. Run from anywhere::

    python examples/checkpoint_continue.py [BROKER_URL] [--prefix NAME] [--steps 40] [--crash-after 5]

What happens:

1. a worker starts in a subprocess (this script with ``--worker``), with a SQLite checkpoint file in a
   temporary directory;
2. the client launches a persisted :class:`examples.processes.Countdown` and waits for its outputs;
   the process checkpoints after every step;
3. once a few steps are checkpointed (the client polls the status's ``progress``), the worker is
   killed with SIGKILL: no graceful stop, no goodbye;
4. a second worker starts on the same checkpoint file. The broker redelivers the launch task (it was
   never acknowledged: a task is acknowledged when its process ends), the worker finds the checkpoint
   of that pid and continues the countdown from the saved step instead of starting again;
5. the client's original launch future resolves with the outputs, which tell where it resumed.

Why the launch waits for the outputs instead of using ``nowait``: a ``nowait`` launch is answered
(and its task acknowledged) as soon as the process starts, so after a crash the broker has nothing to
redeliver; such a process is continued explicitly with ``controller.continue_process(pid)``. The
client chooses the pid itself (``init_kwargs={"pid": ...}``) so it can poll the status meanwhile.

Prints a summary line and exits 0 if the process resumed from a step > 0.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import process_comms

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


def broker_names(prefix: str) -> dict[str, Any]:
    """Exchange and queue names for ``prefix``."""
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


# -- the worker side (``--worker``) -------------------------------------------------------------------
def run_worker(broker: str, prefix: str, db: str) -> int:
    """Run a worker until SIGTERM/SIGINT (or until it is killed, which is the point of this example)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with process_comms.Worker(
        broker, persister=f"sqlite:///{db}", allowed_modules=["examples.processes"], **broker_names(prefix)
    ) as worker:
        print(f"worker ready (os pid {os.getpid()})", flush=True)
        while not stop.wait(1.0):
            pass
        worker.stop(graceful=True)
    return 0


class WorkerProcess:
    """This script with ``--worker`` in a subprocess; its output is echoed with a label."""

    def __init__(self, label: str, broker: str, prefix: str, db: str) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", broker, "--prefix", prefix, "--db", db],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{label}-output", daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                raise RuntimeError(f"{label} did not become ready within {READY_TIMEOUT} s")
            if "worker ready" in line:
                return

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            print(f"  [{self.label}] {line.rstrip()}", flush=True)
            self._lines.put(line)
        self._lines.put(None)

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to clean up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)

    def stop(self) -> int:
        """SIGTERM (a graceful stop), bounded; SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def delete_broker_objects(broker: str, prefix: str) -> None:
    """Remove the exchanges and the (durable) task queue this run declared."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        channel = connection.channel()
        channel.queue_delete(f"{prefix}.process.queue")
        channel.exchange_delete(f"{prefix}.messages")
        channel.exchange_delete(f"{prefix}.tasks")
    finally:
        connection.close()


# -- the client side ---------------------------------------------------------------------------------
def wait_for_step(controller: process_comms.RemoteProcessThreadController, pid: Any, step: int) -> dict[str, Any]:
    """Poll the status until its progress records ``step`` (bounded)."""
    deadline = time.monotonic() + 60
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status: dict[str, Any] = controller.get_status(pid).result(10)
        except process_comms.ProcessUnreachable as exc:  # not started yet
            last = exc
        else:
            last = status
            if int(status["progress"].get("step", 0)) >= step:
                return status
        time.sleep(0.05)
    raise process_comms.TimeoutError(f"process {pid} did not checkpoint step {step}; last answer: {last}")


def run_demo(broker: str, prefix: str, steps: int, crash_after: int, delay: float) -> int:
    from examples.processes import Countdown

    with tempfile.TemporaryDirectory(prefix="process-comms-") as tmp:
        db = str(Path(tmp) / "checkpoints.db")
        workers: list[WorkerProcess] = []
        try:
            workers.append(WorkerProcess("worker 1", broker, prefix, db))
            comm = process_comms.connect(broker, **broker_names(prefix))
            with process_comms.RemoteProcessThreadController(comm, rpc_timeout=10) as controller:
                pid = uuid.uuid4()
                outputs = controller.launch_process(
                    Countdown,
                    init_kwargs={"inputs": {"start": steps, "delay": delay}, "pid": pid},
                    persist=True,
                    timeout=120,
                )
                print(f"launched countdown {pid} ({steps} steps, {delay} s each)")
                status = wait_for_step(controller, pid, crash_after)
                print(f"checkpointed step {status['progress']['step']} on worker os pid {status['host']['pid']}")

                workers[0].kill()
                with process_comms.SqlPersister(f"sqlite:///{db}") as store:
                    saved = store.load_checkpoint(pid)["progress"].get("step", 0)
                print(f"worker 1 killed (SIGKILL); the last checkpoint is step {saved}")

                workers.append(WorkerProcess("worker 2", broker, prefix, db))
                result = outputs.result(120)
                print(f"resumed from step {result['resumed_from']} on worker 2; outputs {result}")
            ok = result["steps"] == steps and 0 < result["resumed_from"] <= saved
            print(
                f"summary: process {pid} crashed at step {saved}, resumed from step {result['resumed_from']}, "
                f"finished {result['steps']} steps: {'OK' if ok else 'FAILED'}",
                flush=True,
            )
            return 0 if ok else 1
        finally:
            for worker in workers:
                worker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Crash a worker mid-process; another one continues it.")
    parser.add_argument("broker", nargs="?", default=os.environ.get("PROCESS_COMMS_BROKER", DEFAULT_BROKER))
    parser.add_argument("--prefix", default=None, help="exchange/queue name prefix (default: a fresh one)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--crash-after", type=int, default=5, help="kill the first worker after this step")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per step")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args.worker:
        return run_worker(args.broker, args.prefix, args.db)
    if not 0 < args.crash_after < args.steps:
        parser.error("--crash-after must be between 0 and --steps")
    prefix = args.prefix or f"pc-example-{uuid.uuid4().hex[:10]}"
    try:
        return run_demo(args.broker, prefix, args.steps, args.crash_after, args.delay)
    finally:
        if args.prefix is None:  # we made these names up: remove what the run declared
            delete_broker_objects(args.broker, prefix)


if __name__ == "__main__":
    sys.exit(main())
