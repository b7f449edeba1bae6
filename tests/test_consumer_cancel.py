"""A worker whose task consumer the broker cancels consumes again, and says so (issue 13).

RabbitMQ cancels a consumer (``basic.cancel``) when its queue is deleted or the node holding it is lost
(https://www.rabbitmq.com/docs/consumer-cancel). Before, the worker stayed alive, logged nothing and never
consumed again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pika
import pytest

import process_comms

from .conftest import BROKER_URL, delete_broker_objects
from .faults._support import wait_until

T = 30.0


@pytest.fixture
def durable_names(names: dict[str, str], broker_url: str) -> Iterator[dict[str, str]]:
    yield names
    delete_broker_objects(names["message_exchange"].rsplit(".", 1)[0])


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
