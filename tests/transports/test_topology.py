"""What we declare on RabbitMQ 3.10 through 4.x (issue 15): queue types named, no transient shared queue,
quorum task queues, and a queue declared by someone else used as it is."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pika
import pytest

import process_comms
from process_comms.transports.rmq import _topology
from tests.conftest import BROKER_URL, delete_broker_objects, rabbitmqctl

T = 30.0


@pytest.fixture
def durable_names(names: dict[str, str], broker_url: str) -> Iterator[dict[str, str]]:
    yield names
    delete_broker_objects(names["message_exchange"].rsplit(".", 1)[0])


def _queue_info(name: str) -> dict[str, str]:
    """``rabbitmqctl list_queues``: the queue's type, durability and arguments."""
    out = rabbitmqctl("list_queues", "--no-table-headers", "name", "type", "durable", "arguments")
    for line in out.splitlines():
        cells = line.split("\t")
        if cells[0] == name:
            return {"type": cells[1], "durable": cells[2], "arguments": cells[3]}
    raise AssertionError(f"queue {name} not listed:\n{out}")


def test_every_queue_spec_names_its_type_and_none_is_transient_and_shared() -> None:
    specs = [
        _topology.reply_queue("x", testing_mode=True),
        _topology.rpc_queue(testing_mode=True),
        _topology.broadcast_queue(testing_mode=True),
        *(
            _topology.task_queue("q", testing_mode=mode, queue_type=kind)
            for mode in (True, False)
            for kind in _topology.QUEUE_TYPES
        ),
    ]
    for spec in specs:
        assert spec.arguments["x-queue-type"] in _topology.QUEUE_TYPES, spec
        assert spec.durable or spec.exclusive, f"transient non-exclusive queue (refused by RabbitMQ 4.3): {spec}"


def test_an_unknown_task_queue_type_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="classic, quorum"):
        process_comms.transports.rmq.RmqCommunicator(BROKER_URL, task_queue_type="stream")  # type: ignore[arg-type]


def test_the_testing_mode_task_queue_is_durable_and_expires(names: dict[str, str], broker_url: str) -> None:
    with process_comms.connect(BROKER_URL, testing_mode=True, **names) as comm:
        comm.add_task_subscriber(lambda _c, task: task)
        info = _queue_info(names["task_queue"])
    assert info["durable"] == "true"
    assert "x-expires" in info["arguments"] and "classic" in info["arguments"]


def test_a_quorum_task_queue_end_to_end(durable_names: dict[str, str]) -> None:
    options = {**durable_names, "task_queue_type": "quorum"}
    with process_comms.connect(BROKER_URL, **options) as worker, process_comms.connect(BROKER_URL, **options) as client:
        worker.add_task_subscriber(lambda _c, task: task + 1)
        assert client.task_send(41).result(T) == 42
        info = _queue_info(durable_names["task_queue"])
    assert info["type"] == "quorum"
    assert "x-delivery-limit" in info["arguments"]


def test_a_task_queue_declared_otherwise_is_used_as_it_is(
    durable_names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: PRECONDITION_FAILED on x-queue-type, the worker did not start and launches failed."""
    caplog.set_level(logging.WARNING, logger="process_comms")
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:  # someone else's declaration: a quorum queue with arguments of its own
        connection.channel().queue_declare(
            durable_names["task_queue"], durable=True, arguments={"x-queue-type": "quorum", "x-max-length": 1000}
        )
    finally:
        connection.close()
    with (
        process_comms.connect(BROKER_URL, **durable_names) as worker,
        process_comms.connect(BROKER_URL, **durable_names) as client,
    ):
        worker.add_task_subscriber(lambda _c, task: task * 3)
        assert client.task_send(5).result(T) == 15
    assert any("using it as it is" in r.message for r in caplog.records)
    assert _queue_info(durable_names["task_queue"])["type"] == "quorum"  # untouched


@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
def test_a_testing_mode_communicator_reconnects_at_once_after_the_last_one_closed(names: dict[str, str]) -> None:
    """Testing mode's exchanges are auto-delete: the broker drops them once the last communicator's bindings
    go, which can fall between a new communicator's declare and its first bind (NOT_FOUND). Before, that
    connect failed (about 1 in 12 closes followed at once by a connect); now it declares again."""
    for _ in range(40):
        comm = process_comms.connect(BROKER_URL, testing_mode=True, **names)
        comm.close()
