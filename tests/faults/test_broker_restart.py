"""Broker faults: connections closed by force and the broker app restarted, with work in flight.

Clients and workers reconnect by themselves; calls in flight fail with a typed connection error or
complete, never hang; workers keep their processes and their RPC routes; queued tasks survive.
The broker broken here is a spare node of this module (`spare_broker`, tests/brokers.py), never the
suite's RabbitMQ on 5672.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from tests.brokers import RabbitNode
from tests.procs import Add, Waiter
from tests.waiting import wait_until

from ._support import Workers, controller

pytestmark = pytest.mark.slow


@pytest.fixture
def prefix(spare_broker: RabbitNode) -> str:
    """Unique names on the spare node (they go with the node at the end of the module)."""
    return f"pc-fault-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(prefix: str, tmp_path: Path, spare_broker: RabbitNode) -> Iterator[Workers]:
    """Call it to start a worker subprocess connected to the spare node."""
    made = Workers(prefix, tmp_path, broker_url=spare_broker.url)
    yield made
    made.close()


def _eventually(ctl: process_comms.RemoteProcessThreadController, call: Any, timeout: float = 60) -> Any:
    """Retry a call until the clients have reconnected (each try is itself bounded)."""
    last: list[BaseException | None] = [None]

    def answered() -> tuple[Any] | None:
        try:
            return (call().result(5),)
        except (process_comms.BrokerUnavailable, process_comms.ProcessUnreachable, process_comms.TimeoutError) as exc:
            last[0] = exc
            return None

    return wait_until(answered, timeout, lambda: f"a recovery: {last[0]!r}", interval=0.2)[0]


def test_forced_close_of_all_connections(prefix: str, workers: Any, spare_broker: RabbitNode) -> None:
    workers()
    with controller(prefix, spare_broker.url) as ctl:
        pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(15)
        in_flight = [ctl.get_status(pid, timeout=20) for _ in range(50)]
        spare_broker.ctl("close_all_connections", "fault test")
        outcomes = process_comms.wait_all(in_flight, timeout=30)
        for outcome in outcomes.values():  # completed, or failed with a typed error: never pending
            assert isinstance(outcome, dict) or isinstance(outcome, process_comms.ProcessCommsError), outcome
        status = _eventually(ctl, lambda: ctl.get_status(pid, timeout=4))  # each try's own deadline first
        assert status["pid"] == pid  # the worker kept the process and re-subscribed its route
        launch = lambda: ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, timeout=4)  # noqa: E731
        assert _eventually(ctl, launch) == {"sum": 3}
        assert ctl.kill_process(pid).result(15) is True


def test_broker_app_restart_keeps_processes_and_queued_tasks(
    prefix: str, workers: Any, spare_broker: RabbitNode
) -> None:
    worker = workers()
    with controller(prefix, spare_broker.url) as ctl:
        # nowait=False: the worker holds the task until the process ends (a nowait launch is acked at once)
        pid = uuid.uuid4()
        ctl.launch_process(Waiter, init_kwargs={"inputs": {}, "pid": pid}, persist=True)
        _eventually(ctl, lambda: ctl.get_status(pid, timeout=4))
        spare_broker.stop_app()
        try:
            with pytest.raises((process_comms.ProcessCommsError, concurrent.futures.TimeoutError)):
                ctl.get_status(pid, timeout=5).result(15)
        finally:
            spare_broker.start_app()  # then await_startup (bounded)
        # clients and the worker reconnect by themselves; the worker still holds the process and its route
        assert _eventually(ctl, lambda: ctl.get_status(pid, timeout=4))["pid"] == pid
        # a graceful stop hands the task back; it must survive another restart while nobody consumes it
        assert worker.terminate() == 0
        wait_until(lambda: _ready_count(spare_broker, prefix) == 1, 20, "the task to be handed back")
        spare_broker.stop_app()
        spare_broker.start_app()
        assert _ready_count(spare_broker, prefix) == 1
        workers()
        assert _eventually(ctl, lambda: ctl.get_status(pid, timeout=4))["pid"] == pid  # same pid, continued
        assert ctl.kill_process(pid).result(15) is True


def _ready_count(node: RabbitNode, prefix: str) -> int:
    for line in node.ctl("list_queues", "name", "messages_ready").splitlines():
        parts = line.split()
        if parts and parts[0] == f"{prefix}.process.queue":
            return int(parts[1])
    return -1
