"""Errors during and after broker recovery say what happened (issue 13, "Misleading errors during recovery")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pytest

import process_comms
from tests.brokers import RabbitNode
from tests.conftest import BROKER_URL, delete_broker_objects
from tests.waiting import wait_until

T = 20.0


@pytest.fixture
def durable_names(names: dict[str, str], broker_url: str) -> Iterator[dict[str, str]]:
    yield names
    delete_broker_objects(names["message_exchange"].rsplit(".", 1)[0])


def _ready(queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def test_a_task_sent_after_its_queue_was_deleted_is_queued_not_refused(durable_names: dict[str, str]) -> None:
    """Before: ProcessUnreachable ("no queue is bound") for every later task of that client."""
    with process_comms.connect(BROKER_URL, **durable_names) as client:
        assert client.task_send({"n": 1}, no_reply=True).result(T) is None
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            connection.channel().queue_delete(durable_names["task_queue"])
        finally:
            connection.close()
        assert client.task_send({"n": 2}, no_reply=True).result(T) is None
    assert _ready(durable_names["task_queue"]) == 1  # the second task, in the queue declared again


def test_an_unroutable_rpc_soon_after_a_reconnection_says_the_broker_was_recovering(
    spare_broker: RabbitNode, names: dict[str, str]
) -> None:
    options: dict[str, Any] = {"testing_mode": True, "reconnect_interval": 0.5, **names}
    with process_comms.connect(spare_broker.url, **options) as client:
        with pytest.raises(process_comms.ProcessUnreachable) as before:
            client.rpc_send("nobody", {"intent": "status"}).result(T)
        assert "recovering" not in str(before.value) and "came back" not in str(before.value)
        spare_broker.stop_app()
        spare_broker.start_app()

        def unroutable_after_recovery() -> str:
            try:
                client.rpc_send("nobody", {"intent": "status"}).result(T)
            except process_comms.ProcessUnreachable as exc:
                return str(exc)
            except process_comms.ProcessCommsError:  # still reconnecting: typed, try again
                return ""
            return ""

        text = wait_until(unroutable_after_recovery, 60, "an answer after the broker came back")
        assert "came back" in text and "retry" in text
