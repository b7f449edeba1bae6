"""A classic task queue whose node stops and comes back: every worker consumes it again, and says so.

A classic queue lives on one node. While that node is down, RabbitMQ cancels the queue's consumers on the
other nodes (https://www.rabbitmq.com/docs/consumer-cancel) and refuses to declare it (``404 NOT_FOUND -
home node ... is down or inaccessible``). Before, a worker connected elsewhere logged one retry and went
silent, never consuming again, and a worker connected to the lost node could not reconnect at all (aio-pika
re-declared the queue first, and the refusal failed every reconnection). The cluster is tests/brokers.py's;
the workers run in their own OS processes (tests/cluster/worker_main.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.wire.messages import Pid
from tests.brokers import RabbitCluster
from tests.cluster.test_cluster import ClusterWorker
from tests.procs import Add, Waiter

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

T = 30.0
#: How long the queue's node stays down (the testers' case: 20 s).
OUTAGE = 20.0
#: The longest a worker may take to consume again once the node is back: the back-off's longest wait
#: (process_comms.defaults.CONSUMER_RETRY_MAX, 10 s) plus a generous margin for a loaded machine.
BACK_WITHIN = 40.0
#: Our own WARNING lines a worker may log for the whole outage: lost, why not back yet (once per reason:
#: the node down, perhaps a connection lost on the way), back. Before, one was logged per attempt.
MAX_WARNINGS = 5


def _health(ctl: process_comms.RemoteProcessThreadController) -> dict[str, bool]:
    """``{worker id: consuming}`` of the workers that answer the real ``workers`` request."""
    return {str(info["worker"]): bool(info["consuming"]) for info in ctl.list_workers(1.5).result(T)}


@pytest.fixture
def setup(rabbit_cluster: RabbitCluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    lost, n1, n2 = rabbit_cluster.nodes
    prefix = f"pc-qloss-{uuid.uuid4().hex[:8]}"
    config = {
        "prefix": prefix,
        "persister": f"sqlite:///{tmp_path}/store.db",
        "prefetch": 4,
        "heartbeat": 2,
        "queue_type": "classic",
    }
    logs = [tmp_path / "on-the-lost-node.log", tmp_path / "elsewhere.log"]
    workers: list[ClusterWorker] = []
    comm = None
    try:
        # the first worker declares the queue: a classic queue lives on the node of its declaring connection
        workers.append(ClusterWorker({**config, "urls": [lost.url, n1.url, n2.url]}, logs[0]))
        workers.append(ClusterWorker({**config, "urls": [n1.url, n2.url, lost.url]}, logs[1]))
        comm = process_comms.connect(
            [n1.url, n2.url],
            message_exchange=f"{prefix}.messages",
            task_exchange=f"{prefix}.tasks",
            task_queue=f"{prefix}.process.queue",
            heartbeat=2,
            reconnect_interval=0.5,
        )
        yield {"controller": process_comms.RemoteProcessThreadController(comm), "logs": logs, **config}
    finally:
        if comm is not None:
            comm.close()
        for worker in workers:
            worker.stop()


def test_a_classic_task_queue_whose_node_restarts_is_consumed_again(
    setup: dict[str, Any], rabbit_cluster: RabbitCluster, record_property: Any
) -> None:
    ctl, queue = setup["controller"], f"{setup['prefix']}.process.queue"
    lost, n1, _ = rabbit_cluster.nodes
    pids: list[Pid] = [ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T) for _ in range(2)]
    assert ctl.execute_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T) == {"sum": 3}
    where = n1.ctl("list_queues", "--no-table-headers", "name", "pid")
    assert f"{queue}\t<{lost.nodename}." in where, where  # the queue lives on the node that is stopped
    health = _health(ctl)
    assert len(health) == 2 and all(health.values()), health

    lost.stop_app()
    stopped = time.monotonic()
    try:
        # while the node is down both workers answer `workers` (the one that was on it fails over) and say
        # that they do not consume, and none says it consumes again until the node is back
        not_consuming: set[str] = set()
        while time.monotonic() - stopped < OUTAGE:
            health = _health(ctl)
            lied = {worker for worker, consuming in health.items() if consuming and worker in not_consuming}
            assert not lied, f"consuming again while the queue's node is down: {lied}"
            not_consuming |= {worker for worker, consuming in health.items() if not consuming}
        assert len(not_consuming) == 2, f"not both workers said they do not consume: {not_consuming}"
    finally:
        lost.start_app()
    back = time.monotonic()

    # tasks queued now wait in the queue until a worker consumes it again
    results = [ctl.execute_process(Add, init_kwargs={"inputs": {"a": i, "b": 1}}) for i in range(8)]
    consuming_after: float | None = None
    while time.monotonic() - back < BACK_WITHIN:
        health = _health(ctl)
        if len(health) == 2 and all(health.values()):
            consuming_after = time.monotonic() - back
            break
    record_property("consuming_again_seconds", None if consuming_after is None else round(consuming_after, 1))
    print(f"\nqueue node back: both workers consuming again after {consuming_after} s")
    assert consuming_after is not None, f"not both workers consume {BACK_WITHIN} s after the node came back: {health}"
    assert [r.result(T) for r in results] == [{"sum": i + 1} for i in range(8)]

    for pid in pids:  # the processes that ran through the outage still run
        assert ctl.get_status(pid).result(T)["state_name"] == "waiting"
        assert ctl.kill_process(pid, "done").result(T) is True

    for log in setup["logs"]:  # said once per change of state, not once per attempt
        said = [line for line in log.read_text().splitlines() if line.startswith("WARNING:process_comms.transports")]
        assert any("consuming task queue" in line and "again" in line for line in said), "\n".join(said)
        assert len([line for line in said if "._tasks:" in line]) <= MAX_WARNINGS, "\n".join(said)
