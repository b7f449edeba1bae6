"""Shared fixtures: the real broker (never a mock), with unique exchange and queue names per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import process_comms
from tests.brokers import rabbit_cluster, spare_broker  # noqa: F401 (fixtures: extra RabbitMQ nodes, tests/brokers.py)

BROKER_URL = os.environ.get("PROCESS_COMMS_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get("PROCESS_COMMS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_BROKER = urllib.parse.urlsplit(BROKER_URL)
#: Host and port of the test broker (every test reaches it through BROKER_URL, or ``broker_url_as``).
BROKER_HOST, BROKER_PORT = _BROKER.hostname or "127.0.0.1", _BROKER.port or 5672


def broker_url_as(user: str, password: str) -> str:
    """BROKER_URL with other credentials (a user a test made, a wrong password)."""
    user, password = urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe="")
    return urllib.parse.urlunsplit(_BROKER._replace(netloc=f"{user}:{password}@{BROKER_HOST}:{BROKER_PORT}"))


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


# -- the guard: under `-m "not broker ..."`, a test that connects to the broker fails, saying so --------------
# That selection must pass with no RabbitMQ; a test that reaches the broker some way this file cannot see
# (BROKER_URL used directly, a module-level helper) would only fail where RabbitMQ is missing. An audit hook
# (sys.addaudithook, event "socket.connect") sees every connection this interpreter opens; one to the
# broker's port while a test without the `broker` marker runs (setup or call) fails that test, naming it.
# Connections from subprocesses are not seen: run the selection with PROCESS_COMMS_TEST_BROKER pointing at
# a closed port (CONTRIBUTING.md, "Running the tests") to catch those too; then the guard watches only the
# default port 5672, where a URL written out in a test, bypassing BROKER_URL, would still find a broker.
_BROKER_PORTS: set[int] = set()
_guard = {"on": False, "test": ""}  # on: the selection leaves broker tests out; test: an unmarked test runs
_unmarked_connects: list[str] = []
_guard_lock = threading.Lock()


def _broker_guard(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or not _guard["test"]:
        return
    address = args[1]
    if isinstance(address, tuple) and len(address) >= 2 and address[1] in _BROKER_PORTS:
        with _guard_lock:
            _unmarked_connects.append(f"{address[0]}:{address[1]}")


def pytest_configure(config: pytest.Config) -> None:
    if "not broker" in (config.option.markexpr or ""):
        _guard["on"] = True
        # BROKER_URL's port only if a broker answers there: a closed one fails every connection by itself,
        # and tests that connect to a closed port on purpose (127.0.0.1:1) are not using a broker
        _BROKER_PORTS.update({5672, BROKER_PORT} if _broker_answers() else {5672})
        sys.addaudithook(_broker_guard)  # for the rest of the session: audit hooks cannot be removed


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _guard["on"] and item.get_closest_marker("broker") is None:
        with _guard_lock:
            _unmarked_connects.clear()  # what an earlier test's teardown opened is not this test's
        _guard["test"] = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    finally:
        with _guard_lock:
            seen, _unmarked_connects[:] = sorted(set(_unmarked_connects)), []
        if seen and _guard["test"] == item.nodeid:
            pytest.fail(
                f"{item.nodeid} connected to the broker ({', '.join(seen)}) without the `broker` marker: "
                "mark it (@pytest.mark.broker, or pytestmark in its module) or use the broker_url fixture",
                pytrace=False,
            )


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _guard["test"] = ""


def _broker_answers() -> bool:
    try:
        socket.create_connection((BROKER_HOST, BROKER_PORT), 2).close()
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
