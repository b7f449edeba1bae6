"""A worker whose task consumer the broker cancels consumes again, and says so (issue 13).

RabbitMQ cancels a consumer (``basic.cancel``) when its queue is deleted or the node holding it is lost
(https://www.rabbitmq.com/docs/consumer-cancel). Before, the worker stayed alive, logged nothing and never
consumed again.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

import process_comms
from tests.conftest import BROKER_URL, delete_broker_objects, rabbitmqctl
from tests.faults._support import Workers, controller
from tests.procs import Add
from tests.waiting import wait_until

T = 30.0


@pytest.fixture
def durable_names(names: dict[str, str], broker_url: str) -> Iterator[dict[str, str]]:
    yield names
    delete_broker_objects(names["message_exchange"].rsplit(".", 1)[0])


@pytest.fixture
def worker_procs(broker_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Call it to start a worker in its own OS process (tests/faults/worker_main.py); ``.prefix``: its names."""
    made = Workers(f"pc-cancel-{uuid.uuid4().hex[:10]}", tmp_path)
    yield made
    made.close()
    delete_broker_objects(made.prefix)


def _delete_queue(name: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        connection.channel().queue_delete(name)
    finally:
        connection.close()


def test_a_deleted_task_queue_is_declared_again_and_consumed(
    durable_names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="process_comms")
    with (
        process_comms.connect(BROKER_URL, **durable_names) as worker,
        process_comms.connect(BROKER_URL, **durable_names) as client,
    ):
        worker.add_task_subscriber(lambda _comm, task: task * 2)
        assert worker.consuming
        assert client.task_send(3).result(T) == 6

        _delete_queue(durable_names["task_queue"])  # the broker cancels the worker's consumer
        wait_until(lambda: any("cancelled the task consumer" in r.message for r in caplog.records), T, "a warning")
        wait_until(lambda: worker.consuming, T, "consuming again")
        assert any("consuming task queue" in r.message for r in caplog.records)

        assert client.task_send(4).result(T) == 8  # the re-declared queue is consumed


def test_consuming_is_false_without_task_subscribers(durable_names: dict[str, str]) -> None:
    with process_comms.connect(BROKER_URL, **durable_names) as comm:
        assert not comm.consuming

        def subscriber(_comm: Any, task: Any) -> Any:
            return task

        comm.add_task_subscriber(subscriber, "s")
        assert comm.consuming
        comm.remove_task_subscriber("s")
        assert not comm.consuming
    assert not comm.consuming


@pytest.mark.slow
def test_a_task_queue_taken_from_a_worker_is_consumed_again_once_it_can_be(
    worker_procs: Workers, tmp_path: Path
) -> None:
    """A raw peer deletes the task queue and holds its name with an exclusive queue of its own: the worker's
    declarations are refused (``405 RESOURCE_LOCKED``, which closes their channel) for as long as the peer
    stays. The worker says it does not consume, keeps trying, and once the peer has gone declares the queue
    again with the same arguments and consumes it. Before, it tried once and then went silent for good."""
    prefix = worker_procs.prefix
    queue = f"{prefix}.process.queue"
    log = tmp_path / "worker.log"
    worker_procs("--log-level", "DEBUG", log_path=log)
    ctl = controller(prefix)
    try:
        assert ctl.execute_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T) == {"sum": 3}
        declared = rabbitmqctl("list_queues", "--no-table-headers", "name", "durable", "arguments")
        declared = next(line for line in declared.splitlines() if line.startswith(f"{queue}\t"))

        squatter = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            channel = squatter.channel()
            channel.queue_delete(queue)  # the broker cancels the worker's consumer
            channel.queue_declare(queue, exclusive=True)
            wait_until(lambda: "RESOURCE_LOCKED" in log.read_text(), T, "the worker's refused declaration")
            assert [w["consuming"] for w in ctl.list_workers(1.0).result(T)] == [False]
            # more attempts, all refused: it stays not consuming and says so once, not once per attempt
            wait_until(lambda: log.read_text().count("still not available") >= 2, T, "two more refused attempts")
            assert [w["consuming"] for w in ctl.list_workers(1.0).result(T)] == [False]
            table = subprocess.run(
                [sys.executable, "-m", "process_comms.cli", "--broker", BROKER_URL, "--prefix", prefix, "workers"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "not consuming: default" in table.stdout, table.stdout + table.stderr
        finally:
            squatter.close()  # its exclusive queue goes with it

        wait_until(lambda: [w["consuming"] for w in ctl.list_workers(1.0).result(T)] == [True], T, "consuming again")
        assert ctl.execute_process(Add, init_kwargs={"inputs": {"a": 2, "b": 2}}).result(T) == {"sum": 4}
        again = rabbitmqctl("list_queues", "--no-table-headers", "name", "durable", "arguments")
        assert declared in again.splitlines()  # the same queue: durable, the same x- arguments
        said = [line for line in log.read_text().splitlines() if line.startswith("WARNING:process_comms")]
        assert sum("RESOURCE_LOCKED" in line for line in said) == 1, "\n".join(said)
        assert any("consuming task queue" in line for line in said), "\n".join(said)
    finally:
        ctl.close()


def test_subscribers_come_and_go_while_the_task_queue_is_unavailable(durable_names: dict[str, str]) -> None:
    """Removing the last task subscriber while the queue cannot be declared neither fails nor waits for it;
    a subscriber added meanwhile gets the queue's tasks once it is back."""
    queue = durable_names["task_queue"]
    with (
        process_comms.connect(BROKER_URL, **durable_names) as worker,
        process_comms.connect(BROKER_URL, **durable_names) as client,
    ):
        worker.add_task_subscriber(lambda _comm, task: task * 2, "first")
        squatter = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            channel = squatter.channel()
            channel.queue_delete(queue)
            channel.queue_declare(queue, exclusive=True)  # refuses the worker's declarations while it lives
            wait_until(lambda: not worker.consuming, T, "not consuming")
            worker.remove_task_subscriber("first")
            worker.add_task_subscriber(lambda _comm, task: task * 3, "second")
            assert not worker.consuming
        finally:
            squatter.close()
        wait_until(lambda: worker.consuming, T, "consuming again")
        assert client.task_send(4).result(T) == 12


def test_a_task_channel_closed_by_the_broker_is_consumed_on_again(
    durable_names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The broker closes the task channel for a channel-level error (here ``406 PRECONDITION_FAILED`` for
    an unknown delivery tag); aio-pika reopens the channel, and the watchdog consumes on it again (the
    consumer is not aio-pika-robust: rmq/_tasks.py ``_consume``)."""
    caplog.set_level(logging.WARNING, logger="process_comms")
    with (
        process_comms.connect(BROKER_URL, **durable_names) as worker,
        process_comms.connect(BROKER_URL, **durable_names) as client,
    ):
        worker.add_task_subscriber(lambda _comm, task: task * 2)
        assert client.task_send(1).result(T) == 2
        task_queue = worker.core.tasks.queues[durable_names["task_queue"]]  # type: ignore[attr-defined]

        async def provoke() -> None:
            channel = await task_queue.channel.get_underlay_channel()
            await channel.basic_ack(2**40)  # never delivered: the broker closes the channel

        worker.submit(provoke).result(T)
        wait_until(lambda: any("cancelled the task consumer" in r.message for r in caplog.records), T, "a warning")
        wait_until(lambda: worker.consuming, T, "consuming again")
        assert client.task_send(5).result(T) == 10
