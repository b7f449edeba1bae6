"""Shared fixtures: the real broker (never a mock), with unique exchange and queue names per test."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import process_comms
from tests.brokers import rabbit_cluster, spare_broker  # noqa: F401 (fixtures: extra RabbitMQ nodes, tests/brokers.py)

BROKER_URL = os.environ.get("PROCESS_COMMS_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get("PROCESS_COMMS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


# Fixtures and parameters that reach a real service: tests using them get the marker automatically,
# so `pytest -m "not broker and not postgres"` runs on a machine without RabbitMQ or PostgreSQL (CONTRIBUTING.md).
_SERVICE_FIXTURES = {
    "broker_url": "broker",
    "pg_table": "postgres",
    "spare_broker": "broker",
    "rabbit_cluster": "cluster",
}
_SERVICE_PARAMS = {("backend", "rmq"): "broker", ("persister", "postgresql"): "postgres"}
#: Seconds a `slow` test may take (the default, `timeout` in pyproject.toml, is 60): the broker-restart
#: scenarios of tests/faults/test_broker_restart.py wait for RabbitMQ's app to stop and start again.
SLOW_TIMEOUT = 150
#: Seconds a `cluster` test may take: the first one also boots the three nodes of `rabbit_cluster` (about 25 s).
CLUSTER_TIMEOUT = 180


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test whose fixtures (or fixture parameters) need the broker or PostgreSQL."""
    for item in items:
        needs = {marker for name, marker in _SERVICE_FIXTURES.items() if name in getattr(item, "fixturenames", ())}
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            needs |= {marker for (name, value), marker in _SERVICE_PARAMS.items() if callspec.params.get(name) == value}
        if "cluster" in needs:  # the cluster's nodes are RabbitMQ too: `-m "not broker"` must leave them out
            needs.add("broker")
        for marker in sorted(needs):
            item.add_marker(marker)
        if item.get_closest_marker("timeout"):
            continue
        if item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.timeout(CLUSTER_TIMEOUT))
        elif item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


def _broker_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), 2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The real RabbitMQ; an unreachable broker fails the test run instead of skipping it."""
    if not _broker_answers():
        pytest.fail(f"RabbitMQ is not answering on {BROKER_URL}: start it with `rabbitmq-server -detached`")
    return BROKER_URL


@pytest.fixture
def names() -> dict[str, str]:
    """Unique exchange and queue names, so tests never see each other's messages."""
    prefix = f"pc-test-{uuid.uuid4().hex[:12]}"
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


def rmq_options(names: dict[str, str]) -> dict[str, Any]:
    """Connection options for a test: unique names, auto-deleting exchanges and queues."""
    return {**names, "testing_mode": True}


@pytest.fixture(params=["embedded", "rmq"])
def backend(request: pytest.FixtureRequest, names: dict[str, str]) -> str:
    """Run the test on both back ends of connect()."""
    if request.param == "rmq":
        request.getfixturevalue("broker_url")
    return str(request.param)


@pytest.fixture
def comm_factory(backend: str, names: dict[str, str]) -> Iterator[Any]:
    """Make communicators on the selected back end, sharing one bus, closed at the end of the test."""
    made: list[process_comms.ThreadCommunicator] = []
    shared: list[process_comms.ThreadCommunicator] = []

    def make() -> process_comms.ThreadCommunicator:
        if backend == "embedded":
            # the embedded bus lives in one communicator: workers and clients share it
            if not shared:
                shared.append(process_comms.connect())
                made.append(shared[0])
            return shared[0]
        comm = process_comms.connect(BROKER_URL, **rmq_options(names))
        made.append(comm)
        return comm

    yield make
    for comm in made:
        comm.close()


@pytest.fixture
def comm(comm_factory: Any) -> process_comms.ThreadCommunicator:
    """One communicator on the selected back end."""
    return comm_factory()  # type: ignore[no-any-return]


def delete_broker_objects(prefix: str) -> None:
    """Remove the task queue and the exchanges a test made under ``prefix`` (the durable ones outlive it)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        channel.queue_delete(f"{prefix}.process.queue")
        channel.exchange_delete(f"{prefix}.messages")
        channel.exchange_delete(f"{prefix}.tasks")
    finally:
        connection.close()


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run rabbitmqctl (bounded) and return its output."""
    out = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout, check=True)
    return out.stdout
