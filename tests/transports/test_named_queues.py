"""Named task queues and per-queue slots (issue 15; aiida-core #7262, #6533), on both back ends."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import process_comms
from process_comms.transports.rmq._tasks import queue_name
from tests.conftest import rabbitmqctl
from tests.procs import Add
from tests.waiting import wait_until

T = 20.0


def test_tasks_go_to_the_queue_they_name(comm_factory: Any) -> None:
    gpu_worker, default_worker, client = comm_factory(), comm_factory(), comm_factory()
    gpu_worker.add_task_subscriber(lambda _c, task: ("gpu", task), queue="gpu")
    default_worker.add_task_subscriber(lambda _c, task: ("default", task))
    assert tuple(client.task_send(1, queue="gpu").result(T)) == ("gpu", 1)
    assert tuple(client.task_send(2).result(T)) == ("default", 2)
    assert tuple(client.task_send(3, queue="default").result(T)) == ("default", 3)


def test_a_launch_on_a_named_queue_runs_on_its_workers(comm_factory: Any) -> None:
    worker, client = comm_factory(), comm_factory()
    launcher = process_comms.ProcessLauncher()
    try:
        worker.add_task_subscriber(launcher, queue="gpu")
        controller = process_comms.RemoteProcessThreadController(client)
        outputs = controller.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, queue="gpu").result(T)
        assert outputs == {"sum": 3}
    finally:
        launcher.close()


@pytest.mark.parametrize("backend", ["rmq"], indirect=True)
def test_slots_limit_the_tasks_of_a_queue_in_progress(comm_factory: Any, names: dict[str, str]) -> None:
    worker, client = comm_factory(), comm_factory()
    release = threading.Event()

    def slow(_comm: Any, task: Any) -> Any:
        release.wait(T)
        return task

    worker.add_task_subscriber(slow, queue="batch", prefetch_count=2)
    futures = [client.task_send(n, queue="batch") for n in range(6)]
    batch = queue_name(names["task_queue"], "batch")

    def counts() -> tuple[int, int] | None:
        for line in rabbitmqctl(
            "list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"
        ).splitlines():
            name, ready, unacked = line.split("\t")
            if name == batch:
                return int(ready), int(unacked)
        return None

    # the broker holds back what the queue's two slots do not take
    wait_until(lambda: counts() == (4, 2), T, "two tasks in progress, four waiting")  # fails the test if never
    release.set()
    assert [f.result(T) for f in futures] == list(range(6))


def test_queue_names_stay_in_the_installation() -> None:
    assert queue_name("aiida-x.process.queue", None) == "aiida-x.process.queue"
    assert queue_name("aiida-x.process.queue", "default") == "aiida-x.process.queue"
    assert queue_name("aiida-x.process.queue", "gpu") == "aiida-x.process.queue.gpu"
    for bad in ("", "a#", "*"):
        with pytest.raises(ValueError):
            queue_name("q", bad)
