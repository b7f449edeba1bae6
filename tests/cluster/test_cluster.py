"""A fleet on a three-node RabbitMQ cluster with a quorum task queue (issue 15).

The cluster is tests/brokers.py's (three nodes of their own, never the suite's broker). Workers run in
their own OS processes with every node's URL and share one SQLite store.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from tests.brokers import RabbitCluster
from tests.procs import Add, Steps, Waiter

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
T = 30.0


class ClusterWorker:
    def __init__(self, config: dict[str, Any], log: Path) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.worker_main", json.dumps(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            with self.proc.stdout:
                for line in self.proc.stdout:
                    if "worker ready" in line:
                        ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            raise AssertionError(f"cluster worker did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def fleet(rabbit_cluster: RabbitCluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    prefix = f"pc-cluster-{uuid.uuid4().hex[:8]}"
    config = {
        "urls": rabbit_cluster.urls,
        "prefix": prefix,
        "persister": f"sqlite:///{tmp_path}/store.db",
        "prefetch": 25,
        "heartbeat": 2,
    }
    workers = [ClusterWorker(config, tmp_path / f"worker{i}.log") for i in range(2)]
    comm = process_comms.connect(
        rabbit_cluster.urls,
        message_exchange=f"{prefix}.messages",
        task_exchange=f"{prefix}.tasks",
        task_queue=f"{prefix}.process.queue",
        task_queue_type="quorum",
        heartbeat=2,
        reconnect_interval=0.5,
    )
    try:
        yield {"controller": process_comms.RemoteProcessThreadController(comm), "workers": workers, **config}
    finally:
        comm.close()
        for worker in workers:
            worker.stop()


def test_a_quorum_task_queue_end_to_end(fleet: dict[str, Any], rabbit_cluster: RabbitCluster) -> None:
    ctl = fleet["controller"]
    pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True, persist=True).result(T)
    assert ctl.pause_process(pid).result(T) is True
    assert ctl.get_status(pid).result(T)["paused"] is True
    assert ctl.play_process(pid).result(T) is True
    assert ctl.kill_process(pid, "done").result(T) is True
    assert ctl.wait_for_process(pid, timeout=T).result(T + 5) == "killed"
    assert ctl.get_process(pid).result(T)["state_name"] == "killed"  # the record, from the fleet
    # create-then-continue: the continue task goes through the quorum queue to a worker with the store
    assert ctl.execute_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T) == {"sum": 3}
    queues = rabbit_cluster.nodes[1].ctl("list_queues", "--no-table-headers", "name", "type")
    assert f"{fleet['prefix']}.process.queue\tquorum" in queues


def test_losing_a_node_loses_nothing_and_runs_no_step_twice(
    fleet: dict[str, Any], rabbit_cluster: RabbitCluster, tmp_path: Path, record_property: Any
) -> None:
    ctl, steps_log = fleet["controller"], tmp_path / "steps.log"
    n_processes, n_steps = 100, 20
    inputs = {"n": n_steps, "delay": 0.1, "log": str(steps_log)}
    pids = [
        ctl.launch_process(Steps, init_kwargs={"inputs": inputs}, persist=True, nowait=True).result(T)
        for _ in range(n_processes)
    ]
    # 50 run (two workers, 25 slots each), 50 wait in the queue; then the node every client is on goes
    lost = rabbit_cluster.nodes[0]
    lost.stop_app()
    stopped_at = time.monotonic()
    try:
        first_answer: list[float] = []
        deadline = time.monotonic() + 120
        ended: dict[Any, str] = {}
        while len(ended) < n_processes and time.monotonic() < deadline:
            outcomes = process_comms.wait_all({p: ctl.get_status(p, timeout=10) for p in pids if p not in ended}, 15)
            for pid, status in outcomes.items():
                if isinstance(status, dict):
                    if not first_answer:
                        first_answer.append(time.monotonic() - stopped_at)
                    if status.get("state_name") == "finished":
                        ended[pid] = "finished"
                elif not isinstance(status, process_comms.ProcessCommsError):
                    raise AssertionError(f"untyped error for {pid}: {status!r}")
            time.sleep(0.5)  # polling interval of the observation, not synchronisation
    finally:
        lost.start_app()
    failover = first_answer[0] if first_answer else float("inf")
    record_property("cluster_failover_seconds", round(failover, 1))
    print(f"\ncluster node loss: first answer {failover:.1f} s after the node stopped; {len(ended)} finished")
    assert len(ended) == n_processes, f"{n_processes - len(ended)} processes did not finish"
    runs = collections.Counter(tuple(line.split()[:2]) for line in steps_log.read_text().splitlines())
    twice = {key: count for key, count in runs.items() if count > 1}
    assert not twice, f"steps that ran twice: {sorted(twice)[:10]}"
    assert len(runs) == n_processes * n_steps
