"""Shared pieces of the fault tests: worker subprocesses, unique broker names, bounded waits."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import process_comms
from tests.conftest import BROKER_URL, delete_broker_objects

ROOT = Path(__file__).resolve().parents[2]


class WorkerProc:
    """A worker subprocess; ready once it printed "worker ready"."""

    def __init__(
        self,
        prefix: str,
        persister: str,
        broker_url: str = BROKER_URL,
        *,
        extra_args: Sequence[str] = (),
        log_path: Path,
    ) -> None:
        """``extra_args`` go to tests/faults/worker_main.py (``--queue gpu=2``, ``--heartbeat 2``...); the
        worker's stderr (its log) goes to the file ``log_path``: never to a pipe nobody reads, whose full buffer
        would stop the worker at its next log line."""
        self.log_path = log_path
        self.log_file = open(log_path, "w")  # closed by close()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults.worker_main",
                "--broker",
                broker_url,
                "--persister",
                persister,
                "--prefix",
                prefix,
                *extra_args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            with self.proc.stdout:  # closed at end of output: no unclosed-file warning
                for line in self.proc.stdout:
                    if "worker ready" in line:
                        ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            self.proc.kill()
            self.proc.wait(10)
            self.close()
            raise AssertionError(f"worker did not start: {self.log()}")

    def log(self) -> str:
        """What the worker has logged so far (its stderr)."""
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """Close the worker's log file (after it ended)."""
        self.log_file.close()

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode


class Workers:
    """Starts worker subprocesses sharing one SQLite checkpoint file; kills leftovers on close."""

    def __init__(self, prefix: str, tmp_path: Path, broker_url: str = BROKER_URL) -> None:
        self.prefix = prefix
        self.broker_url = broker_url
        self.persister = f"sqlite:///{tmp_path}/checkpoints.db"
        self.tmp_path = tmp_path
        self.started: list[WorkerProc] = []

    def __call__(self, *extra_args: str, log_path: Path | None = None) -> WorkerProc:
        """A worker subprocess; its log goes to ``log_path``, by default ``worker-<n>.log`` beside the store."""
        log_path = log_path or self.tmp_path / f"worker-{len(self.started) + 1}.log"
        worker = WorkerProc(self.prefix, self.persister, self.broker_url, extra_args=extra_args, log_path=log_path)
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        """Every started worker's log, each under a heading (for a failing test's message)."""
        return "".join(f"\n--- worker {n} ---\n{worker.log()}" for n, worker in enumerate(self.started, 1))

    def close(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(10)
            worker.close()


@pytest.fixture
def prefix(broker_url: str) -> Iterator[str]:
    """Unique exchange and queue names, deleted after the test."""
    prefix = f"pc-fault-{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_broker_objects(prefix)


@pytest.fixture
def workers(prefix: str, tmp_path: Path) -> Iterator[Workers]:
    """Call it to start a worker subprocess."""
    made = Workers(prefix, tmp_path)
    yield made
    made.close()


def controller(prefix: str, broker_url: str = BROKER_URL) -> process_comms.RemoteProcessThreadController:
    comm = process_comms.connect(
        broker_url,
        message_exchange=f"{prefix}.messages",
        task_exchange=f"{prefix}.tasks",
        task_queue=f"{prefix}.process.queue",
    )
    return process_comms.RemoteProcessThreadController(comm)
