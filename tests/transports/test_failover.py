"""Several broker addresses (issue 15): the first that answers is used, a lost one fails over to the next.

Two spare RabbitMQ nodes of their own (tests/brokers.py), never the node on 5672.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

import process_comms
from tests.brokers import RabbitNode
from tests.waiting import wait_until

pytestmark = pytest.mark.broker

T = 20.0


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[RabbitNode, RabbitNode]]:
    first, second = RabbitNode(), RabbitNode()
    try:
        first.launch()
        second.launch()
        first.wait_started()
        second.wait_started()
        yield first, second
    finally:
        first.stop()
        second.stop()


def _closed_port_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on (bound and released)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def test_the_first_address_that_answers_is_used(
    two_nodes: tuple[RabbitNode, RabbitNode], names: dict[str, str]
) -> None:
    _, second = two_nodes
    urls = f"{_closed_port_url()}, {second.url}"  # the comma form of the CLI and PROCESS_COMMS_BROKER
    with process_comms.connect(urls, testing_mode=True, **names) as comm:
        comm.add_task_subscriber(lambda _c, task: task)
        assert comm.task_send("here").result(T) == "here"
        assert str(second.port) in comm.core.url  # type: ignore[attr-defined]


def test_no_address_answering_is_one_clear_error(names: dict[str, str]) -> None:
    with pytest.raises(process_comms.BrokerUnavailable) as failed:
        process_comms.connect([_closed_port_url(), _closed_port_url()], connect_timeout=2, **names)
    assert failed.value.args[0].count("amqp://guest:***@127.0.0.1:") == 2  # both named, no password


def test_a_lost_broker_fails_over_to_the_next(two_nodes: tuple[RabbitNode, RabbitNode], names: dict[str, str]) -> None:
    first, second = two_nodes
    urls = [first.url, second.url]
    options: dict[str, Any] = {"testing_mode": True, "reconnect_interval": 0.5, **names}
    with process_comms.connect(urls, **options) as worker, process_comms.connect(urls, **options) as client:
        worker.add_task_subscriber(lambda _c, task: task + 1)
        assert client.task_send(1).result(T) == 2
        first.stop_app()  # both lose their connection; their next attempts go to the second node
        try:

            def answered() -> bool:
                try:
                    return bool(client.task_send(2, timeout=5).result(T) == 3)  # its own deadline first
                except process_comms.ProcessCommsError:  # typed while failing over (or unroutable, briefly)
                    return False

            wait_until(answered, 60, "a task answered through the second node")
            assert str(second.port) in client.core.url  # type: ignore[attr-defined]
            assert worker.consuming
        finally:
            first.start_app()
